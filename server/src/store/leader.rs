//! Which node of a store runs the background loops (retention, upload cleanup, removal
//! proposals): exactly one at a time.
//!
//! A store only this process opens (sled, memory) always leads. On PostgreSQL the node
//! that holds the session-level advisory lock [`LEADER_LOCK`] on a connection of its own
//! leads; every other node tries again every [`RETRY`]. When the leader dies its
//! connection drops, the database releases the lock, and the next node to try takes over.
//! The leader checks its connection every [`CHECK`]: one that fails or does not answer in
//! time ends its leadership at once, before the database has necessarily noticed, so two
//! nodes lead at once only for as long as a check takes to time out (the loops' writes
//! are idempotent or refused as conflicts, so that overlap costs at most a repeated log
//! line).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::pg_tls::PgTls;

/// The advisory lock key of the background loops ("ratlead" in ASCII; the migration's
/// key differs).
const LEADER_LOCK: i64 = 0x0072_6174_6c65_6164;
/// How often a node that does not lead tries to take the lock.
const RETRY: Duration = Duration::from_secs(2);
/// How often the leader checks that its connection (and so the lock) is alive, and how
/// long that check may take.
const CHECK: Duration = Duration::from_secs(2);

/// Whether this node runs the background loops now, and waits for that to change.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// `true` while this node leads.
    now: watch::Receiver<bool>,
    /// Keeps the channel of a fixed answer open ([`Leadership::always`]).
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// A node that always leads (its store has no other process).
    pub fn always() -> Self {
        let (tx, now) = watch::channel(true);
        Self {
            now,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// Whether this node leads now.
    pub fn leads(&self) -> bool {
        *self.now.borrow()
    }

    /// Resolves once this node leads (at once if it does). Never resolves once nobody
    /// can tell any more (the store is gone).
    pub async fn acquired(&mut self) {
        self.wait_until(true).await;
    }

    /// Resolves once this node no longer leads.
    pub async fn lost(&mut self) {
        self.wait_until(false).await;
    }

    async fn wait_until(&mut self, leads: bool) {
        if self.now.wait_for(|now| *now == leads).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Competes for the lock on PostgreSQL at `config` until every [`Leadership`] handle is
/// gone.
pub(super) fn spawn_postgres(
    rt: &tokio::runtime::Runtime,
    config: tokio_postgres::Config,
    tls: PgTls,
) -> Leadership {
    let (tx, now) = watch::channel(false);
    rt.spawn(async move {
        loop {
            if tx.is_closed() {
                return;
            }
            if let Err(e) = lead_once(&config, &tls, &tx).await {
                tracing::warn!(error = %e, "the connection for the background loops' lock failed");
            }
            if tx.send_replace(false) {
                tracing::warn!("this node no longer runs the background loops");
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = tx.closed() => return,
            }
        }
    });
    Leadership { now, _fixed: None }
}

/// One connection: tries for the lock until it gets it, then holds it while the
/// connection answers. Returns when the connection fails or nobody asks any more.
async fn lead_once(
    config: &tokio_postgres::Config,
    tls: &PgTls,
    tx: &watch::Sender<bool>,
) -> Result<(), String> {
    let (client, connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut driver = tokio::spawn(connection);
    loop {
        let won = tokio::select! {
            r = timeout(client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])) => {
                r?.get::<_, bool>(0)
            }
            _ = &mut driver => return Err("the connection closed".into()),
            () = tx.closed() => return Ok(()),
        };
        if won {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = &mut driver => return Err("the connection closed".into()),
            () = tx.closed() => return Ok(()),
        }
    }
    tx.send_replace(true);
    tracing::info!("this node runs the background loops (it holds the database's lock)");
    let result = loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK) => {
                if let Err(e) = timeout(client.simple_query("SELECT 1")).await {
                    break Err(e);
                }
            }
            _ = &mut driver => break Err("the connection closed".into()),
            () = tx.closed() => break Ok(()),
        }
    };
    // Closing the connection releases the lock (if the database has not already).
    drop(client);
    driver.abort();
    result
}

async fn timeout<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK, query).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_of_one_process_always_leads() {
        let mut leader = Leadership::always();
        assert!(leader.leads());
        tokio::time::timeout(Duration::from_secs(5), leader.acquired())
            .await
            .expect("leads at once");
        let lost = tokio::time::timeout(Duration::from_millis(50), leader.lost()).await;
        assert!(lost.is_err(), "never loses it");
    }
}
