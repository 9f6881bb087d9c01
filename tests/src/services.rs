//! Real PostgreSQL and Redis servers for the state tests, each a child process on a free loopback
//! port with its data in a temporary directory, stopped when dropped.
//!
//! `initdb` refuses to run as root: as root the harness runs PostgreSQL as the `postgres` user
//! (created by Debian's package) through `setpriv`, which execs, so the child's pid is the
//! server's and `kill -9` hits it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Waits until `port` accepts TCP connections.
fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not start listening on {port}");
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// A `redis-server` with persistence off.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Self {
            port: free_port(),
            child: None,
            dir,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on the same port.
    pub fn restart(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        wait_for_port(self.port, "redis-server", &mut child);
        self.child = Some(child);
    }

    /// `SIGSTOP`: the server keeps its socket open but answers nothing (a hung Redis).
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal(c, "-STOP");
        }
    }

    /// `SIGCONT` after [`Redis::pause`].
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, "-CONT");
        }
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "-CONT");
            signal(&c, "-KILL");
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PostgreSQL server (`initdb` + `postgres`) with durability off, for speed.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres_user: bool,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// The directory holding `initdb` and `postgres`: Debian keeps them off PATH.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them)",
    )
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let as_postgres_user = is_root();
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown of the data directory failed");
        }
        let mut pg = Self {
            port: free_port(),
            bin: pg_bin(),
            data,
            as_postgres_user,
            child: None,
            _dir: dir,
        };
        let out = pg
            .command("initdb")
            .args([
                "-U",
                "tollgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&pg.data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.restart();
        pg
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Starts the server (again) on the same port and data.
    pub fn restart(&mut self) {
        let socket_dir = self
            .data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .to_path_buf();
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres runs");
        wait_for_port(self.port, "postgres", &mut child);
        self.child = Some(child);
    }

    /// Stops the server at once (`SIGQUIT`: immediate shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "-QUIT");
            let _ = c.wait();
        }
    }

    /// URL of the maintenance database.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://tollgate@127.0.0.1:{}/{database}", self.port)
    }

    /// Waits until the server accepts connections: its port opens before it is ready
    /// (`57P03 the database system is starting up`), after a start and after a restart.
    pub async fn ready(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match sqlx::PgConnection::connect(&self.admin_url()).await {
                Ok(conn) => return conn,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("postgres never accepted a connection: {e}"),
            }
        }
    }

    /// Creates a fresh database and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut conn = self.ready().await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create database");
        self.url(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` with persistence off, started with `args` and its data in a directory of its
/// own; killed when dropped.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisNode {
    /// Listens on `port` for plain TCP (or, with `--port 0` among `args`, only as they say).
    pub fn start(port: u16, args: &[&str]) -> Self {
        Self::start_watching(port, port, args)
    }

    /// Started with `args`; ready when `ready_port` accepts.
    pub fn start_watching(port: u16, ready_port: u16, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        wait_for_port(ready_port, "redis-server", &mut child);
        Self {
            port,
            child: Some(child),
            dir,
        }
    }

    /// A Sentinel on `port` watching the primary `mymaster` at `primary` (quorum 2, down after
    /// 1 s), its config file in its own directory (a Sentinel rewrites it).
    pub fn sentinel(port: u16, primary: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {primary} 2\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\nsentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        wait_for_port(port, "redis sentinel", &mut child);
        Self {
            port,
            child: Some(child),
            dir,
        }
    }

    /// `redis-cli -p PORT ARGS…`, its output trimmed (plain TCP nodes only).
    pub fn cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "-KILL");
            let _ = c.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of `n` masters and no replicas on loopback (`redis-cli --cluster create`).
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    pub fn start(n: usize) -> Self {
        let nodes: Vec<RedisNode> = (0..n)
            .map(|_| {
                RedisNode::start(
                    free_port(),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|n| RedisNode::cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}

/// A primary, one replica and three Sentinels watching them as `mymaster`.
pub struct RedisSentinels {
    pub primary: RedisNode,
    pub replica: RedisNode,
    pub sentinels: Vec<RedisNode>,
}

impl RedisSentinels {
    pub fn start() -> Self {
        let primary = RedisNode::start(free_port(), &[]);
        let p = primary.port.to_string();
        let replica = RedisNode::start(free_port(), &["--replicaof", "127.0.0.1", &p]);
        let sentinels: Vec<RedisNode> = (0..3)
            .map(|_| RedisNode::sentinel(free_port(), primary.port))
            .collect();
        // Ready when every Sentinel knows the replica (found through the primary).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sentinels.iter().all(|s| {
            RedisNode::cli(s.port, &["sentinel", "replicas", "mymaster"])
                .contains(&replica.port.to_string())
        }) {
            assert!(
                Instant::now() < deadline,
                "the Sentinels never saw the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            primary,
            replica,
            sentinels,
        }
    }

    pub fn url(&self) -> String {
        let s: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+sentinel://{}/mymaster", s.join(","))
    }

    /// The port the Sentinels give for the primary now.
    pub fn primary_port(&self) -> u16 {
        let out = RedisNode::cli(
            self.sentinels[0].port,
            &["sentinel", "get-master-addr-by-name", "mymaster"],
        );
        out.lines().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0)
    }
}
