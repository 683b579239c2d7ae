//! Group commit for statements many jobs run at once.
//!
//! Jobs in flight hand their item to a [`Batcher`] and wait for their own result. One task
//! takes whatever queued up while its previous call ran and runs the batch function once for
//! all of it (one statement: one round trip, one commit). At low load a batch is one item and
//! nothing waits; under load batches grow by themselves. A job still gets its result only after
//! the statement that carried its item committed, so it is acknowledged no earlier than before.

use std::future::Future;
use std::sync::Arc;

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

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task. `run` gets the pool and up to `max` items and must answer them in
    /// order, one result each. `name` labels `wafleet_batch_size{batch}`. The task ends when
    /// every handle is gone.
    pub fn start<F, Fut>(name: &'static str, max: usize, pg: sqlx::PgPool, run: F) -> Self
    where
        F: Fn(sqlx::PgPool, Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = sqlx::Result<Vec<O>>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
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
                match run(pg.clone(), items).await {
                    Ok(results) if results.len() == n => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Ok(results) => {
                        let e = Arc::new(sqlx::Error::Protocol(format!(
                            "{name}: {} results for {n} items",
                            results.len()
                        )));
                        for reply in replies {
                            let _ = reply.send(Err(BatchError::Db(e.clone())));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.send(Err(BatchError::Db(e.clone())));
                        }
                    }
                }
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
