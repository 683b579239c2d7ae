//! Group commit for statements many jobs run at once.
//!
//! Jobs in flight hand their item to a [`Batcher`] and wait for their own result. One task
//! takes whatever queued up while its previous call ran and runs the batch function once for
//! all of it (one statement: one round trip, one commit). At low load a batch is one item and
//! nothing waits; under load batches grow by themselves. A job still gets its result only after
//! the statement that carried its item committed, so it is acknowledged no earlier than before.
//!
//! The task keeps its Postgres connection while batches follow one another and gives it back to
//! the pool when nothing is queued: sqlx pings a connection (a round trip) every time it returns
//! to the pool, which would otherwise double the round trips of every batch.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

/// Why an item got no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The statement carrying the item failed (every item in it gets the same error).
    #[error("{0}")]
    Db(Arc<sqlx::Error>),
    #[error("the batching task has stopped")]
    Stopped,
}

type Reply<O> = oneshot::Sender<Result<O, BatchError>>;

/// Whether Postgres refused the statement itself (a row, a constraint), as opposed to being
/// unavailable (SQLSTATE classes 08, 40, 53, 57, 58, or no answer at all), which every item of
/// the batch would meet alone too.
fn refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            !["08", "40", "53", "57", "58"]
                .iter()
                .any(|c| code.starts_with(c))
        }
        _ => false,
    }
}

/// Each item's answer from running it alone.
fn answer_each<O>(name: &str, each: Vec<sqlx::Result<Option<O>>>) -> Vec<Result<O, BatchError>> {
    each.into_iter()
        .map(|result| match result {
            Ok(Some(one)) => Ok(one),
            Ok(None) => Err(BatchError::Db(Arc::new(sqlx::Error::Protocol(format!(
                "{name}: no result for an item run alone"
            ))))),
            Err(e) => Err(BatchError::Db(Arc::new(e))),
        })
        .collect()
}

/// Each of `n` items' answer from one statement run for all of them: its own result, or the
/// statement's error (also when it answered a different number of items).
fn answer_all<O>(name: &str, n: usize, result: sqlx::Result<Vec<O>>) -> Vec<Result<O, BatchError>> {
    let e = match result {
        Ok(results) if results.len() == n => return results.into_iter().map(Ok).collect(),
        Ok(results) => {
            sqlx::Error::Protocol(format!("{name}: {} results for {n} items", results.len()))
        }
        Err(e) => e,
    };
    let e = Arc::new(e);
    (0..n).map(|_| Err(BatchError::Db(e.clone()))).collect()
}

/// A handle on one batching task; cheap to clone.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<(I, Reply<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task. `run` gets a connection from `pg` and up to `max` items and must answer
    /// them in order, one result each. `name` labels `wafleet_batch_size{batch}`. The task ends
    /// when every handle is gone.
    ///
    /// When a statement carrying several items fails with an error that is not about the
    /// database being unavailable (a row it refuses, say), each item is run again alone, so the
    /// one Postgres refuses fails and the others, of other conversations and channels, go through.
    pub fn start<F>(name: &'static str, max: usize, pg: sqlx::PgPool, run: F) -> Self
    where
        F: for<'c> Fn(&'c mut PgConnection, &'c [I]) -> BoxFuture<'c, sqlx::Result<Vec<O>>>
            + Send
            + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        tokio::spawn(async move {
            // The connection, kept while more items are queued; and the first item of the next
            // batch, if one was.
            let mut held: Option<sqlx::pool::PoolConnection<sqlx::Postgres>> = None;
            let mut next = None;
            loop {
                let first = match next.take() {
                    Some(first) => first,
                    None => {
                        held = None;
                        match rx.recv().await {
                            Some(first) => first,
                            None => break,
                        }
                    }
                };
                let mut batch = vec![first];
                while batch.len() < max.max(1) {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // A job that gave up waiting (its deadline passed) is retried later: skip it.
                batch.retain(|(_, reply)| !reply.is_closed());
                if batch.is_empty() {
                    continue;
                }
                metrics::histogram!("wafleet_batch_size", "batch" => name)
                    .record(batch.len() as f64);
                let (items, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
                let n = items.len();
                let conn = match held.take() {
                    Some(conn) => Ok(conn),
                    None => pg.acquire().await,
                };
                let answers = match conn {
                    Ok(mut conn) => {
                        let (answers, last_ok) = match run(&mut conn, &items).await {
                            Err(e) if n > 1 && refused(&e) => {
                                metrics::counter!("wafleet_batch_splits_total", "batch" => name)
                                    .increment(1);
                                tracing::warn!(batch = name, items = n, error = %e,
                                    "a batch statement was refused; running its items one by one");
                                let mut each = Vec::with_capacity(n);
                                for item in &items {
                                    each.push(
                                        run(&mut conn, std::slice::from_ref(item))
                                            .await
                                            .map(|mut one| one.pop()),
                                    );
                                }
                                let last_ok = each.last().is_some_and(Result::is_ok);
                                (answer_each(name, each), last_ok)
                            }
                            result => {
                                let ok = result.is_ok();
                                (answer_all(name, n, result), ok)
                            }
                        };
                        // After an error the connection may be unusable: the pool checks it.
                        // Kept only while the pool has others to spare, so that batches never
                        // keep connections from other work.
                        if last_ok && pg.num_idle() > 0 {
                            held = Some(conn);
                        }
                        answers
                    }
                    Err(e) => answer_all(name, n, Err(e)),
                };
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                next = rx.try_recv().ok();
            }
        });
        Self { tx }
    }

    /// Runs `item` in the next batch and returns its result.
    pub async fn run(&self, item: I) -> Result<O, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Stopped)?
    }
}
