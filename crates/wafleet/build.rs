//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` (`db::MIGRATOR`)
//! embeds the files it finds in `migrations/` at compile time, and on stable Rust it cannot ask
//! cargo to look at the directory again, so a new migration was left out of an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
