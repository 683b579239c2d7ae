//! Postgres tables. Each submodule owns one table (or a few that move together) and is the only
//! code that writes SQL for it.

pub mod channels;
pub mod conversations;
pub mod replies;
