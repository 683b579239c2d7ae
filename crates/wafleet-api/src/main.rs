//! `wafleet-api`: the agent API dashboards call. Settings come from the environment (see the
//! README); everything else is `wafleet::api::run`.

use anyhow::Context;
use wafleet::api::{self, ApiSettings};
use wafleet::telemetry;

#[tokio::main]
async fn main() -> Result<(), wafleet::telemetry::Exit> {
    telemetry::check_logging_env()?;
    telemetry::init_logging();
    telemetry::install_panic_hook();
    let settings = ApiSettings::from_env()?;
    let listener =
        wafleet::listen(settings.listen).with_context(|| format!("binding {}", settings.listen))?;
    Ok(api::run(settings, listener, wafleet::shutdown_signal()).await?)
}
