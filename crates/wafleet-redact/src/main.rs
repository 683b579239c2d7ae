//! `wafleet-redact`: JSON lines in, redacted JSON lines out. See the crate docs.

fn main() -> std::io::Result<()> {
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    wafleet_redact::run(stdin, stdout)
}
