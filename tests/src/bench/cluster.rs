//! Where the relay workloads keep their records (`--store`, `--nodes`): the data
//! directory's sled file, or a fresh PostgreSQL database per workload with one or more
//! in-process server nodes on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use rathaus_server::{RunOptions, RunningServer};
use rathaus_tests::TestDatabase;

/// The files a node's data directory holds besides its records: another node on the
/// same database gets a copy (the same certificate, so clients pin one fingerprint).
const NODE_FILES: [&str; 5] = [
    "config.json",
    "cert.der",
    "key.der",
    "removal.key",
    "reset.key",
];

/// The store and node count of a run.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// The PostgreSQL server to make each workload's database on (`None`: sled).
    postgres: Option<String>,
    /// Server nodes per workload (more than one only on PostgreSQL).
    nodes: usize,
}

impl Placement {
    pub(crate) fn new(postgres: Option<String>, nodes: usize) -> Result<Self> {
        ensure!(nodes >= 1, "--nodes must be at least 1");
        ensure!(
            nodes == 1 || postgres.is_some(),
            "--nodes {nodes} needs --store postgres://… (nodes share one database)"
        );
        Ok(Self { postgres, nodes })
    }

    /// What workload names carry, so rows of different stores never share a name:
    /// nothing on sled, `-pg` on one PostgreSQL node, `-pg-2nodes` on two.
    pub(crate) fn tag(&self) -> String {
        match (&self.postgres, self.nodes) {
            (None, _) => String::new(),
            (Some(_), 1) => "-pg".into(),
            (Some(_), n) => format!("-pg-{n}nodes"),
        }
    }

    pub(crate) fn nodes(&self) -> usize {
        self.nodes
    }

    /// A fresh database for one workload (dropped with it), or `None` on sled.
    pub(crate) fn database(&self) -> Result<Option<TestDatabase>> {
        self.postgres
            .as_deref()
            .map(TestDatabase::create_on)
            .transpose()
    }
}

/// The server nodes of one workload, all on the records of one initialised data
/// directory (and so on one database).
pub(crate) struct Cluster {
    /// The nodes; the first serves from the data directory itself.
    nodes: Vec<RunningServer>,
    /// The other nodes' data directories (copies), removed with the cluster.
    copies: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `nodes` servers on `127.0.0.1:0` over the records of `data`.
    pub(crate) async fn start(data: &Path, nodes: usize) -> Result<Self> {
        let mut cluster = Self {
            nodes: Vec::new(),
            copies: Vec::new(),
        };
        cluster.nodes.push(start_node(data).await?);
        for _ in 1..nodes {
            let copy = node_dir(data)?;
            cluster.nodes.push(start_node(copy.path()).await?);
            cluster.copies.push(copy);
        }
        Ok(cluster)
    }

    /// Every node's address, the first node's first.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(RunningServer::local_addr).collect()
    }

    /// The certificate fingerprint every node presents.
    pub(crate) fn fingerprint(&self) -> String {
        self.nodes
            .first()
            .map(RunningServer::fingerprint)
            .unwrap_or_default()
    }

    pub(crate) async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
        drop(self.copies);
    }
}

/// A second node's data directory: a copy of everything but the records of `data`.
pub(crate) fn node_dir(data: &Path) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for name in NODE_FILES {
        std::fs::copy(data.join(name), dir.path().join(name))?;
    }
    Ok(dir)
}

/// Starts an in-process server on `127.0.0.1:0` over `data`.
pub(crate) async fn start_node(data: &Path) -> Result<RunningServer> {
    start_node_at(data.to_path_buf(), "127.0.0.1:0".parse()?, None).await
}

/// Starts an in-process server over `data` on `listen`, with `clock` if given.
pub(crate) async fn start_node_at(
    data: PathBuf,
    listen: SocketAddr,
    clock: Option<std::sync::Arc<rathaus_server::clock::ManualClock>>,
) -> Result<RunningServer> {
    let mut options = RunOptions::new(data);
    options.listen = Some(listen);
    if let Some(clock) = clock {
        options.clock = clock;
    }
    Ok(rathaus_server::start(options).await?)
}
