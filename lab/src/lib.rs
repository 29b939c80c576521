//! The routelb lab: a fake cluster on one machine with real kernels, real routing daemons
//! and real connections.
//!
//! A router namespace runs BIRD or FRR (the files in `examples/`), three node namespaces
//! each get routelb's agent and a routing daemon, a client namespace opens connections.
//! `fake-apiserver` runs in this process; the allocator and the agents are the real
//! `routelb` binary (agents run in the host namespace with `--netns`, programming their
//! node's namespace). Everything is removed on drop or by [`down`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};

/// A routing daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bird,
    Frr,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bird => "bird",
            Kind::Frr => "frr",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        match s {
            "bird" => Ok(Kind::Bird),
            "frr" => Ok(Kind::Frr),
            _ => bail!("unknown routing daemon {s:?} (bird or frr)"),
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `routelb` binary.
    pub routelb: PathBuf,
    /// The repository (for `templates/` and `examples/`).
    pub repo: PathBuf,
    pub router: Kind,
    /// One entry per node: the daemon beside its agent.
    pub nodes: Vec<Kind>,
    /// 1, or 2: nodes split over two leaf routers, each node peering with its own.
    pub leaves: usize,
    /// A LAN client beside the nodes (IPv4 and IPv6) and a local (L2) pool `lan` on the
    /// LAN: 192.0.2.200-192.0.2.220 and 2001:db8:2::200-2001:db8:2::220.
    pub l2: bool,
    /// More arguments for every agent (`--vip-mode local-route`, ...).
    pub agent_args: Vec<String>,
    /// A cluster with the CRDs, `routelb-system` and the Nodes but no routelb objects
    /// (no RouterConfig, BGPPeer or pool): what a user applies next is theirs, and
    /// [`Lab::up`] does not wait for BGP sessions.
    pub bare: bool,
}

impl Options {
    /// The lab of the README: a BIRD router and three BIRD nodes.
    pub fn new(routelb: PathBuf, repo: PathBuf) -> Options {
        Options {
            routelb,
            repo,
            router: Kind::Bird,
            nodes: vec![Kind::Bird; 3],
            leaves: 1,
            l2: false,
            agent_args: Vec::new(),
            bare: false,
        }
    }

    /// The lab the tests run: this checkout, its debug binary (or `$ROUTELB_BIN`), a
    /// `router` and `nodes`.
    pub fn for_tests(router: Kind, nodes: &[Kind]) -> Options {
        Options::this_checkout("debug", router, nodes)
    }

    /// The lab the benchmarks run: as [`Options::for_tests`], with the release binary.
    pub fn for_benches(router: Kind, nodes: &[Kind]) -> Options {
        Options::this_checkout("release", router, nodes)
    }

    fn this_checkout(profile: &str, router: Kind, nodes: &[Kind]) -> Options {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let routelb = std::env::var_os("ROUTELB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target").join(profile).join("routelb"));
        let repo = repo.canonicalize().unwrap_or(repo);
        let mut o = Options::new(routelb, repo);
        o.router = router;
        o.nodes = nodes.to_vec();
        o
    }
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A lab node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub netns: String,
    pub address: IpAddr,
    pub kind: Kind,
    pub leaf: usize,
    pub dir: PathBuf,
    pub health_port: u16,
}

/// A router (leaf).
#[derive(Debug, Clone)]
pub struct RouterInfo {
    pub netns: String,
    pub address: IpAddr,
    pub dir: PathBuf,
}

/// A client connecting continuously (see [`Lab::client_loop`]).
#[derive(Debug)]
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<BTreeMap<String, usize>>>,
    log: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl ClientLoop {
    /// From `since`: how long until the first success through another node than `old`,
    /// and how many connections failed meanwhile (`None` while there is none).
    pub fn recovery(&self, since: Instant, old: &str) -> Option<(Duration, usize)> {
        let r = self.results();
        let after: Vec<&(Instant, String)> = r.iter().filter(|(t, _)| *t >= since).collect();
        let first = after
            .iter()
            .position(|(_, n)| !n.starts_with("failed") && n != old)?;
        let failed = after[..first]
            .iter()
            .filter(|(_, n)| n.starts_with("failed"))
            .count();
        Some((after[first].0 - since, failed))
    }

    /// Every connection's end time and result so far (a node name, or `failed: ...`).
    pub fn results(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops; connections by node that answered, and failures by kind (`failed: ...`).
    pub fn stop(self) -> BTreeMap<String, usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
    }
}

/// A running lab.
pub struct Lab {
    pub id: String,
    pub opts: Options,
    pub api: FakeApiServer,
    pub client: kube::Client,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub routers: Vec<RouterInfo>,
    pub client_netns: String,
    /// The LAN client (with [`Options::l2`]): on the nodes' segment, 192.0.2.9 and
    /// 2001:db8:2::9.
    pub lan_netns: String,
    netns: Vec<String>,
    procs: Vec<Proc>,
    stop: Arc<AtomicBool>,
    backends: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .finish()
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// One command to the BIRD whose files (`bird.ctl`) are in `dir`.
fn birdc(dir: &Path, cmd: &str) -> anyhow::Result<String> {
    run(Command::new("birdc")
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .arg(cmd))
}

/// One command to the FRR whose files (`frr/`) are in `dir`.
fn vtysh(dir: &Path, cmd: &str) -> anyhow::Result<String> {
    run(Command::new("vtysh")
        .arg("--vty_socket")
        .arg(dir.join("frr"))
        .args(["-c", cmd]))
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Runs `f` on a thread inside a network namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        setns(
            File::open(&path).with_context(|| format!("open {path}"))?,
            CloneFlags::CLONE_NEWNET,
        )
        .context("setns")?;
        Ok(f())
    })
}

/// The value of one series in a Prometheus text exposition (labels matched exactly).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all && rest.matches("=\"").count() == labels.len())
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// The changes to the route to `addr` in an `ip monitor route` log: for each, whether it
/// was a deletion and the next hops it had.
pub fn route_changes(log: &str, addr: IpAddr) -> Vec<(bool, BTreeSet<IpAddr>)> {
    let mut out: Vec<(bool, BTreeSet<IpAddr>)> = Vec::new();
    let mut current = false;
    for line in log.lines() {
        // `ip -ts monitor` puts a timestamp first.
        let line = match line.strip_prefix('[') {
            Some(rest) => rest.split_once("] ").map_or(line, |(_, r)| r),
            None => line,
        };
        let record = !line.starts_with([' ', '\t']);
        if record {
            let (deleted, rest) = match line.strip_prefix("Deleted ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            current = rest.split_whitespace().next() == Some(&addr.to_string());
            if current {
                out.push((deleted, BTreeSet::new()));
            }
        }
        if current {
            let words: Vec<&str> = line.split_whitespace().collect();
            let hops = words
                .windows(2)
                .filter(|w| w[0] == "via")
                .filter_map(|w| w[1].parse::<IpAddr>().ok());
            if let Some(last) = out.last_mut() {
                last.1.extend(hops);
            }
        }
    }
    out
}

fn lab_dirs() -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(std::env::temp_dir())? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("routelb-lab-"))
        {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

/// Runs the real kubectl against a lab (its kubeconfig); its output, or an error with
/// what it printed on standard error.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("run kubectl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command in a host of the kept lab (`scripts/lab --keep`): `router`, `node-1`,
/// `client`, ... as its `hosts` file names them. Returns the command's exit code.
pub fn exec_in(host: &str, cmd: &[String]) -> anyhow::Result<i32> {
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = lab_dirs()?
        .into_iter()
        .filter_map(|d| {
            let m = std::fs::metadata(d.join("hosts")).ok()?.modified().ok()?;
            Some((m, d))
        })
        .collect();
    kept.sort();
    let Some((_, dir)) = kept.pop() else {
        bail!("no kept lab is running: start one with scripts/lab --keep");
    };
    let hosts = std::fs::read_to_string(dir.join("hosts"))?;
    let names: Vec<(&str, &str)> = hosts.lines().filter_map(|l| l.split_once(' ')).collect();
    let Some((_, ns)) = names.iter().find(|(n, _)| *n == host) else {
        let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        bail!(
            "no host {host:?} in the lab: its hosts are {}",
            all.join(", ")
        );
    };
    if cmd.is_empty() {
        bail!("say what to run, e.g. scripts/lab exec {host} ip route");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .status()
        .context("ip netns exec")?;
    Ok(status.code().unwrap_or(1))
}

/// Removes what labs left behind: a kept lab is asked to stop (SIGTERM: it removes
/// everything itself), then namespaces and the processes recorded in
/// `/tmp/routelb-lab-*/pids` (a lab killed before it could clean up) go.
pub fn down() -> anyhow::Result<usize> {
    let mut removed = 0;
    for path in lab_dirs()? {
        // Only a keeper that still runs (a killed one's pid may be another process now).
        if let Some(pid) = std::fs::read_to_string(path.join("keeper"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("routelb-lab"))
            })
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            // Its teardown removes the lab's directory last (an exited keeper may stay a
            // zombie until its parent reaps it, so /proc is no sign).
            let start = Instant::now();
            while path.exists() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(100));
            }
            removed += 1;
        }
    }
    for path in lab_dirs()? {
        if let Ok(pids) = std::fs::read_to_string(path.join("pids")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&path);
        removed += 1;
    }
    for ns in ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if ns.starts_with("rlab") {
            if let Ok(pids) = ip(&["netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", ns]);
            removed += 1;
        }
    }
    Ok(removed)
}

impl Lab {
    /// Builds and starts everything; returns once every node's agent is ready and every
    /// BGP session is up.
    pub async fn up(opts: Options) -> anyhow::Result<Lab> {
        if opts.nodes.is_empty() || !(1..=2).contains(&opts.leaves) {
            bail!("a lab needs nodes and one or two leaves");
        }
        if !opts.routelb.exists() {
            bail!(
                "{} does not exist: build routelb first (cargo build)",
                opts.routelb.display()
            );
        }
        // A missing daemon would otherwise show only as sessions that never come up.
        let kinds: Vec<Kind> = opts.nodes.iter().copied().chain([opts.router]).collect();
        for (kind, path) in [
            (Kind::Bird, "/usr/sbin/bird"),
            (Kind::Frr, "/usr/lib/frr/bgpd"),
        ] {
            if kinds.contains(&kind) && !std::path::Path::new(path).exists() {
                bail!(
                    "{path} is missing: install {} first (scripts/deps, or apt-get install bird2 frr frr-pythontools)",
                    kind.name()
                );
            }
        }
        let id = format!(
            "rlab{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("routelb-lab-{id}"));
        std::fs::create_dir_all(&dir)?;
        let api = FakeApiServer::start().await?;
        let client = api.client()?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig())?;
        let mut lab = Lab {
            id: id.clone(),
            opts,
            api,
            client,
            dir,
            kubeconfig,
            nodes: Vec::new(),
            routers: Vec::new(),
            client_netns: format!("{id}c"),
            lan_netns: format!("{id}l"),
            netns: Vec::new(),
            procs: Vec::new(),
            stop: Arc::default(),
            backends: Vec::new(),
        };
        lab.build_network()?;
        lab.install_cluster().await?;
        lab.start_routers()?;
        for i in 0..lab.nodes.len() {
            lab.start_daemon(i)?;
            lab.start_agent(i)?;
        }
        lab.start_allocator()?;
        lab.start_backends()?;
        for i in 0..lab.nodes.len() {
            lab.wait_agent_ready(i).await?;
        }
        if !lab.opts.bare {
            lab.wait_sessions(lab.nodes.len(), Duration::from_secs(60))
                .await?;
        }
        Ok(lab)
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.netns.push(name.to_string());
        in_ns(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build_network(&mut self) -> anyhow::Result<()> {
        let id = self.id.clone();
        for leaf in 0..self.opts.leaves {
            let ns = format!("{id}r{leaf}");
            self.add_netns(&ns)?;
            let (addr, len) = match (self.opts.leaves, leaf) {
                (1, _) => ("192.0.2.1", "24"),
                (_, 0) => ("192.0.2.1", "25"),
                _ => ("192.0.2.129", "25"),
            };
            in_ns(&ns, &["ip", "link", "add", "br0", "type", "bridge"])?;
            in_ns(&ns, &["ip", "link", "set", "br0", "up"])?;
            in_ns(
                &ns,
                &["ip", "addr", "add", &format!("{addr}/{len}"), "dev", "br0"],
            )?;
            in_ns(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            in_ns(
                &ns,
                &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
            )?;
            let rdir = self.dir.join(format!("router{leaf}"));
            std::fs::create_dir_all(&rdir)?;
            self.routers.push(RouterInfo {
                netns: ns,
                address: addr.parse()?,
                dir: rdir,
            });
        }
        // The client hangs off the first router.
        let c = self.client_netns.clone();
        self.add_netns(&c)?;
        let r0 = self.routers[0].netns.clone();
        ip(&[
            "link", "add", "eth0", "netns", &c, "type", "veth", "peer", "name", "client0", "netns",
            &r0,
        ])?;
        in_ns(
            &r0,
            &["ip", "addr", "add", "198.51.100.1/24", "dev", "client0"],
        )?;
        in_ns(&r0, &["ip", "link", "set", "client0", "up"])?;
        in_ns(&c, &["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        in_ns(&c, &["ip", "link", "set", "eth0", "up"])?;
        in_ns(
            &c,
            &["ip", "route", "add", "default", "via", "198.51.100.1"],
        )?;
        if self.opts.l2 {
            let l = self.lan_netns.clone();
            self.add_netns(&l)?;
            ip(&[
                "link", "add", "eth0", "netns", &l, "type", "veth", "peer", "name", "lan0",
                "netns", &r0,
            ])?;
            in_ns(&r0, &["ip", "link", "set", "lan0", "master", "br0"])?;
            in_ns(&r0, &["ip", "link", "set", "lan0", "up"])?;
            in_ns(
                &r0,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    "2001:db8:2::1/64",
                    "dev",
                    "br0",
                    "nodad",
                ],
            )?;
            in_ns(&l, &["ip", "addr", "add", "192.0.2.9/24", "dev", "eth0"])?;
            in_ns(
                &l,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    "2001:db8:2::9/64",
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            in_ns(&l, &["ip", "link", "set", "eth0", "up"])?;
        }
        for (i, kind) in self.opts.nodes.clone().into_iter().enumerate() {
            let n = i + 1;
            let leaf = if self.opts.leaves == 2 && n > self.opts.nodes.len().div_ceil(2) {
                1
            } else {
                0
            };
            let router = self.routers[leaf].clone();
            let address: IpAddr = if leaf == 0 {
                format!("192.0.2.{}", 10 + n)
            } else {
                format!("192.0.2.{}", 130 + n)
            }
            .parse()?;
            let len = if self.opts.leaves == 1 { 24 } else { 25 };
            let ns = format!("{id}n{n}");
            self.add_netns(&ns)?;
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &format!("node{n}"),
                "netns",
                &router.netns,
            ])?;
            in_ns(
                &router.netns,
                &["ip", "link", "set", &format!("node{n}"), "master", "br0"],
            )?;
            in_ns(
                &router.netns,
                &["ip", "link", "set", &format!("node{n}"), "up"],
            )?;
            in_ns(
                &ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{address}/{len}"),
                    "dev",
                    "eth0",
                ],
            )?;
            if self.opts.l2 {
                let v6 = format!("2001:db8:2::{}/64", 10 + n);
                in_ns(
                    &ns,
                    &["ip", "-6", "addr", "add", &v6, "dev", "eth0", "nodad"],
                )?;
            }
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(
                &ns,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &router.address.to_string(),
                ],
            )?;
            let dir = self.dir.join(format!("node-{n}"));
            std::fs::create_dir_all(&dir)?;
            self.nodes.push(NodeInfo {
                name: format!("node-{n}"),
                netns: ns,
                address,
                kind,
                leaf,
                dir,
                health_port: free_port(),
            });
        }
        Ok(())
    }

    async fn install_cluster(&mut self) -> anyhow::Result<()> {
        let crds_yaml = run(Command::new(&self.opts.routelb).arg("crds"))?;
        let crds: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&crds_yaml)
            .context("parse the CRDs printed by routelb crds")?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crds {
            api.create(&PostParams::default(), &crd).await?;
        }
        self.apply(
            "v1",
            "Namespace",
            "namespaces",
            None,
            json!({"metadata": {"name": "routelb-system"}}),
        )
        .await?;
        for n in self.nodes.clone() {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": n.name, "labels": {
                    "kubernetes.io/hostname": n.name,
                    "lab.routelb.io/daemon": n.kind.name(),
                    "lab.routelb.io/leaf": format!("leaf{}", n.leaf + 1),
                }},
                "status": {"addresses": [{"type": "InternalIP", "address": n.address.to_string()}], "conditions": [{"type": "Ready", "status": "True"}]}
            }))?;
            Api::<Node>::all(self.client.clone())
                .create(&PostParams::default(), &node)
                .await?;
        }
        // Templates are copied so that a test may edit them.
        let templates = self.dir.join("templates");
        std::fs::create_dir_all(&templates)?;
        for t in ["bird.conf.tera", "frr.conf.tera"] {
            std::fs::copy(self.opts.repo.join("templates").join(t), templates.join(t))?;
        }
        if self.opts.bare {
            return Ok(());
        }
        self.apply_router_configs(None).await?;
        for (leaf, r) in self.routers.clone().iter().enumerate() {
            self.apply_routelb("BGPPeer", "bgppeers", &format!("leaf{}", leaf + 1), json!({
                "address": r.address.to_string(),
                "asn": 64500,
                "nodeSelector": {"matchLabels": {"lab.routelb.io/leaf": format!("leaf{}", leaf + 1)}},
            }))
            .await?;
        }
        self.apply_routelb(
            "AddressPool",
            "addresspools",
            "lab",
            json!({"addresses": ["203.0.113.10-203.0.113.250"]}),
        )
        .await?;
        if self.opts.l2 {
            self.apply_routelb(
                "AddressPool",
                "addresspools",
                "lan",
                json!({"addresses": ["192.0.2.200-192.0.2.220", "2001:db8:2::200-2001:db8:2::220"],
                       "mode": "local", "autoAssign": false}),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates or updates any object by server-side apply.
    pub async fn apply(
        &self,
        api_version: &str,
        kind: &str,
        plural: &str,
        ns: Option<&str>,
        body: Value,
    ) -> anyhow::Result<()> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let mut obj = body;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let name = obj["metadata"]["name"]
            .as_str()
            .context("a name")?
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply("routelb-lab").force(),
            &Patch::Apply(&obj),
        )
        .await?;
        Ok(())
    }

    /// Creates or updates a routelb object (AddressPool, BGPPeer, RouterConfig).
    pub async fn apply_routelb(
        &self,
        kind: &str,
        plural: &str,
        name: &str,
        spec: Value,
    ) -> anyhow::Result<()> {
        self.apply(
            "routelb.io/v1alpha1",
            kind,
            plural,
            None,
            json!({"metadata": {"name": name}, "spec": spec}),
        )
        .await
    }

    fn record_pid(&self, pid: u32) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))
        {
            let _ = writeln!(f, "{pid}");
        }
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
        let out = File::create(log)?;
        let child = cmd
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let pid = child.id();
        self.record_pid(pid);
        self.procs.push(Proc {
            name: name.to_string(),
            child,
        });
        Ok(pid)
    }

    fn stop_proc(&mut self, name: &str, signal: &str) {
        if let Some(pos) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(pos);
            let _ = Command::new("kill")
                .args([signal, &p.child.id().to_string()])
                .status();
            let _ = p.child.wait();
        }
    }

    /// The PID of a lab process (`bird-node-1`, `agent-node-2`, ...).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Whether a lab process is still running.
    pub fn alive(&mut self, name: &str) -> bool {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_none())
    }

    fn frr_cmd(ns: &str, daemon: &str, dir: &Path, config: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, &format!("/usr/lib/frr/{daemon}")])
            .args(["-F", "traditional", "--vty_socket"])
            .arg(dir)
            .arg("-z")
            .arg(dir.join("zserv.api"))
            .arg("-i")
            .arg(dir.join(format!("{daemon}.pid")))
            .arg("-f")
            .arg(config)
            .args([
                "-u",
                "frr",
                "-g",
                "frr",
                "--log",
                "stdout",
                "--log-level",
                "warnings",
            ]);
        if daemon == "bgpd" {
            c.args(["-p", "179"]);
        }
        if daemon == "bfdd" {
            c.arg("--bfdctl").arg(dir.join("bfdd.sock"));
        }
        c
    }

    fn frr_dir(dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        run(Command::new("chown").arg("-R").arg("frr:frr").arg(dir))?;
        std::fs::write(dir.join("vtysh.conf"), "service integrated-vtysh-config\n")?;
        Ok(())
    }

    fn start_routers(&mut self) -> anyhow::Result<()> {
        for i in 0..self.routers.len() {
            self.start_router(i)?;
        }
        Ok(())
    }

    /// Starts router `i`'s routing daemon (again).
    pub fn start_router(&mut self, i: usize) -> anyhow::Result<()> {
        let r = self.routers[i].clone();
        match self.opts.router {
            Kind::Bird => {
                let conf = self.opts.repo.join("examples/bird/router.conf");
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &r.netns, "bird", "-f", "-c"])
                    .arg(&conf)
                    .arg("-s")
                    .arg(r.dir.join("bird.ctl"))
                    .arg("-P")
                    .arg(r.dir.join("bird.pid"));
                self.spawn(&format!("router{i}"), &mut cmd, &r.dir.join("bird.log"))?;
            }
            Kind::Frr => {
                let fdir = r.dir.join("frr");
                Self::frr_dir(&fdir)?;
                let conf = fdir.join("frr.conf");
                std::fs::copy(self.opts.repo.join("examples/frr/router.conf"), &conf)?;
                run(Command::new("chown").arg("frr:frr").arg(&conf))?;
                for d in ["zebra", "bgpd", "bfdd"] {
                    self.spawn(
                        &format!("router{i}-{d}"),
                        &mut Self::frr_cmd(&r.netns, d, &fdir, &conf),
                        &fdir.join(format!("{d}.log")),
                    )?;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Ok(())
    }

    /// Stops router `i`'s routing daemon (SIGTERM): its sessions with the nodes go down.
    pub fn stop_router(&mut self, i: usize) {
        match self.opts.router {
            Kind::Bird => self.stop_proc(&format!("router{i}"), "-TERM"),
            Kind::Frr => {
                for d in ["bgpd", "bfdd", "zebra"] {
                    self.stop_proc(&format!("router{i}-{d}"), "-TERM");
                }
            }
        }
    }

    /// Starts a node's routing daemon with the bootstrap configuration of `examples/`.
    pub fn start_daemon(&mut self, i: usize) -> anyhow::Result<()> {
        let n = self.nodes[i].clone();
        match n.kind {
            Kind::Bird => {
                let conf = n.dir.join("bird.conf");
                if !conf.exists() {
                    std::fs::copy(self.opts.repo.join("examples/bird/bird.conf"), &conf)?;
                }
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &n.netns, "bird", "-f", "-R", "-c"])
                    .arg(&conf)
                    .arg("-s")
                    .arg(n.dir.join("bird.ctl"))
                    .arg("-P")
                    .arg(n.dir.join("bird.pid"));
                self.spawn(
                    &format!("bird-{}", n.name),
                    &mut cmd,
                    &n.dir.join("bird.log"),
                )?;
            }
            Kind::Frr => {
                let fdir = n.dir.join("frr");
                Self::frr_dir(&fdir)?;
                let conf = fdir.join("frr.conf");
                if !conf.exists() {
                    std::fs::copy(self.opts.repo.join("examples/frr/frr.conf"), &conf)?;
                }
                run(Command::new("chown").arg("-R").arg("frr:frr").arg(&fdir))?;
                for d in ["zebra", "bgpd", "bfdd"] {
                    self.spawn(
                        &format!("{d}-{}", n.name),
                        &mut Self::frr_cmd(&n.netns, d, &fdir, &conf),
                        &fdir.join(format!("{d}.log")),
                    )?;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Ok(())
    }

    /// Stops a node's routing daemon as a pod deletion does: SIGTERM, BIRD after
    /// `birdc graceful restart` when `graceful` (what the sidecar's preStop hook runs),
    /// so that its sessions close without a notification and routers keep its routes.
    pub fn stop_daemon(&mut self, i: usize, graceful: bool) {
        let n = self.nodes[i].clone();
        if graceful && n.kind == Kind::Bird {
            let _ = birdc(&n.dir, "graceful restart");
        }
        for p in ["bird", "bgpd", "bfdd", "zebra"] {
            self.stop_proc(&format!("{p}-{}", n.name), "-TERM");
        }
    }

    /// Stops a node's routing daemon (SIGKILL: a crash).
    pub fn kill_daemon(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        for p in ["bird", "zebra", "bgpd", "bfdd"] {
            self.stop_proc(&format!("{p}-{name}"), "-9");
        }
    }

    /// Starts a node's agent.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let n = self.nodes[i].clone();
        let fdir = n.dir.join("frr");
        let mut cmd = Command::new(&self.opts.routelb);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "agent",
                "--node-name",
                &n.name,
                "--netns",
                &format!("/run/netns/{}", n.netns),
            ])
            .args(["--health-addr", &format!("127.0.0.1:{}", n.health_port)])
            .arg("--template-dir")
            .arg(self.dir.join("templates"))
            .arg("--bird-config")
            .arg(n.dir.join("bird.conf"))
            .arg("--bird-socket")
            .arg(n.dir.join("bird.ctl"))
            .arg("--frr-config")
            .arg(fdir.join("frr.conf"))
            .arg("--frr-vty-dir")
            .arg(&fdir)
            .args(&self.opts.agent_args)
            .env("RUST_LOG", "info");
        self.spawn(
            &format!("agent-{}", n.name),
            &mut cmd,
            &n.dir.join("agent.log"),
        )?;
        Ok(())
    }

    /// Stops a node's agent (SIGTERM, as a rolling update does).
    pub fn stop_agent(&mut self, i: usize) {
        let name = format!("agent-{}", self.nodes[i].name);
        self.stop_proc(&name, "-TERM");
    }

    fn start_allocator(&mut self) -> anyhow::Result<()> {
        self.start_allocator_named("allocator", "lab")
    }

    /// Starts an allocator replica: process `name`, Lease identity `identity`.
    pub fn start_allocator_named(&mut self, name: &str, identity: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.opts.routelb);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "allocator",
                "--identity",
                identity,
                "--lease-duration",
                "3",
                "--status-interval",
                "0.5",
            ])
            .args(["--health-addr", &format!("127.0.0.1:{}", free_port())])
            .env("RUST_LOG", "info");
        let log = self.dir.join(format!("{name}.log"));
        self.spawn(name, &mut cmd, &log)?;
        Ok(())
    }

    /// Kills a lab process (SIGKILL: a crash) and reaps it.
    pub fn kill(&mut self, name: &str) {
        self.stop_proc(name, "-9");
    }

    /// A tiny TCP backend on every node: port 8080 answers with the node's name.
    fn start_backends(&mut self) -> anyhow::Result<()> {
        for n in self.nodes.clone() {
            let stop = self.stop.clone();
            let name = n.name.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let handle = std::thread::spawn(move || {
                let path = format!("/run/netns/{}", n.netns);
                let entered = File::open(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|f| setns(f, CloneFlags::CLONE_NEWNET).map_err(anyhow::Error::from));
                // Both families on one socket ([::] takes IPv4 too), IPv4 alone if not.
                let listener = entered.and_then(|_| {
                    TcpListener::bind("[::]:8080")
                        .or_else(|_| TcpListener::bind("0.0.0.0:8080"))
                        .map_err(anyhow::Error::from)
                });
                let listener = match listener {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = listener.set_nonblocking(true);
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(format!("{name}\n").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
            rx.recv().context("backend thread")??;
            self.backends.push(handle);
        }
        Ok(())
    }

    /// Runs `routelb status ARGS` against the lab: its exit code and its output.
    pub fn routelb_status(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new(&self.opts.routelb)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("status")
            .args(args)
            .output()
            .context("run routelb status")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Waits until a node's agent answers /readyz with 200.
    pub async fn wait_agent_ready(&self, i: usize) -> anyhow::Result<()> {
        let port = self.nodes[i].health_port;
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the agent of {} is not ready after 30 s (see {})",
                    self.nodes[i].name,
                    self.nodes[i].dir.join("agent.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Established BGP sessions per router: peer name -> since (an opaque stamp that
    /// changes when the session is re-established).
    pub fn sessions(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        self.routers
            .iter()
            .map(|r| match self.opts.router {
                Kind::Bird => {
                    let out = birdc(&r.dir, "show protocols")?;
                    Ok(out
                        .lines()
                        .filter(|l| l.contains("BGP") && l.contains("Established"))
                        .filter_map(|l| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            Some((f.first()?.to_string(), f.get(4)?.to_string()))
                        })
                        .collect())
                }
                Kind::Frr => {
                    let out = vtysh(&r.dir, "show bgp neighbors json")?;
                    let v: Value = serde_json::from_str(&out).unwrap_or_default();
                    Ok(v.as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(_, p)| p["bgpState"] == "Established")
                        .map(|(peer, p)| {
                            (peer.clone(), p["bgpTimerUpEstablishedEpoch"].to_string())
                        })
                        .collect())
                }
            })
            .collect()
    }

    /// Waits until `count` sessions are established over all routers.
    pub async fn wait_sessions(&self, count: usize, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let up: usize = self
                .sessions()
                .map(|s| s.iter().map(BTreeMap::len).sum())
                .unwrap_or(0);
            if up >= count {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "{up} of {count} BGP sessions established after {limit:?} (logs in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The router's route to an address (`ip route show ADDR`), as text.
    pub fn route(&self, router: usize, addr: IpAddr) -> String {
        self.route_to(router, &addr.to_string())
    }

    /// The router's route to a destination (`ip route show DST`: an address or a prefix).
    pub fn route_to(&self, router: usize, dst: &str) -> String {
        in_ns(&self.routers[router].netns, &["ip", "route", "show", dst]).unwrap_or_default()
    }

    /// Starts recording every route change the router's kernel announces
    /// (`ip monitor route`), for [`Lab::stop_route_monitor`].
    pub fn start_route_monitor(&mut self, router: usize) -> anyhow::Result<()> {
        let ns = self.routers[router].netns.clone();
        let log = self.dir.join(format!("route-monitor-{router}.log"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "ip", "-ts", "monitor", "route"]);
        self.spawn(&format!("monitor-{router}"), &mut cmd, &log)?;
        // `ip monitor` subscribes right after it starts.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Stops the route monitor and returns what it recorded.
    pub fn stop_route_monitor(&mut self, router: usize) -> String {
        self.stop_proc(&format!("monitor-{router}"), "-TERM");
        std::fs::read_to_string(self.dir.join(format!("route-monitor-{router}.log")))
            .unwrap_or_default()
    }

    /// Takes a node's link to its router down (a dead node, as far as the router can
    /// tell) or up again.
    pub fn node_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        in_ns(&self.nodes[i].netns, &["ip", "link", "set", "eth0", state]).map(|_| ())
    }

    /// BFD sessions the first router has up (BIRD: `birdc show bfd sessions`).
    pub fn bfd_sessions_up(&self) -> usize {
        let r = &self.routers[0];
        let out = match self.opts.router {
            Kind::Bird => birdc(&r.dir, "show bfd sessions"),
            Kind::Frr => vtysh(&r.dir, "show bfd peers brief"),
        };
        out.unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w.eq_ignore_ascii_case("up")))
            .count()
    }

    /// A node's routes in a table (`ip route show table N`, both families), as text.
    pub fn node_routes(&self, i: usize, table: u32) -> String {
        let ns = &self.nodes[i].netns;
        let t = table.to_string();
        let v4 = in_ns(ns, &["ip", "route", "show", "table", &t]).unwrap_or_default();
        let v6 = in_ns(ns, &["ip", "-6", "route", "show", "table", &t]).unwrap_or_default();
        v4 + &v6
    }

    /// What every routing daemon knows of one address, for a failing test to show: the
    /// router's BGP routes, and each node's table 200, kube-lb0 addresses, daemon route
    /// and sessions, with the end of its daemon's log.
    pub fn explain(&self, addr: IpAddr) -> String {
        let a = addr.to_string();
        let or_error = |r: anyhow::Result<String>| r.unwrap_or_else(|e| format!("{e:#}"));
        let birdc = |dir: &Path, cmd: &str| or_error(birdc(dir, cmd));
        let vtysh = |dir: &Path, cmd: &str| or_error(vtysh(dir, cmd));
        let tail = |path: PathBuf| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        let mut out = String::new();
        for r in &self.routers {
            let view = match self.opts.router {
                Kind::Bird => birdc(&r.dir, &format!("show route all for {a}")),
                Kind::Frr => vtysh(&r.dir, &format!("show bgp ipv4 unicast {a}")),
            };
            out.push_str(&format!("== router {}: {view}\n", r.netns));
        }
        for n in &self.nodes {
            let ns = &n.netns;
            let table = in_ns(ns, &["ip", "route", "show", "table", "200", &a]).unwrap_or_default();
            let addrs = in_ns(
                ns,
                &["ip", "-o", "addr", "show", "dev", "kube-lb0", "to", &a],
            )
            .unwrap_or_default();
            let (view, log) = match n.kind {
                Kind::Bird => (
                    birdc(&n.dir, &format!("show route all for {a}"))
                        + &birdc(&n.dir, "show protocols"),
                    tail(n.dir.join("bird.log")),
                ),
                Kind::Frr => (
                    vtysh(&n.dir, &format!("show ip route {a}"))
                        + &vtysh(&n.dir, &format!("show bgp ipv4 unicast {a}"))
                        + &vtysh(&n.dir, "show bgp summary"),
                    tail(n.dir.join("frr/zebra.log")) + "\n" + &tail(n.dir.join("frr/bgpd.log")),
                ),
            };
            out.push_str(&format!(
                "== {} ({}): table 200: {table}kube-lb0: {addrs}daemon:\n{view}\nlog:\n{log}\n",
                n.name,
                n.kind.name()
            ));
        }
        out
    }

    /// The next hops of the router's route to an address.
    pub fn nexthops(&self, router: usize, addr: IpAddr) -> BTreeSet<IpAddr> {
        self.nexthops_to(router, &addr.to_string())
    }

    /// The next hops of the router's route to a destination (an address or a prefix).
    pub fn nexthops_to(&self, router: usize, dst: &str) -> BTreeSet<IpAddr> {
        self.route_to(router, dst)
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }

    /// Waits until the router's next hops for `addr` are exactly `want`.
    pub async fn wait_nexthops(
        &self,
        router: usize,
        addr: IpAddr,
        want: &BTreeSet<IpAddr>,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        self.wait_nexthops_to(router, &addr.to_string(), want, limit)
            .await
    }

    /// Waits until the router's next hops for a destination are exactly `want`.
    pub async fn wait_nexthops_to(
        &self,
        router: usize,
        dst: &str,
        want: &BTreeSet<IpAddr>,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if &self.nexthops_to(router, dst) == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "router next hops for {dst}: {:?}, wanted {want:?}; route: {}",
                    self.nexthops_to(router, dst),
                    self.route_to(router, dst)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Node addresses of some nodes (by index).
    pub fn node_addrs(&self, which: impl IntoIterator<Item = usize>) -> BTreeSet<IpAddr> {
        which.into_iter().map(|i| self.nodes[i].address).collect()
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates a LoadBalancer Service for the backends (port 8080).
    pub async fn create_service(&self, name: &str, local: bool) -> anyhow::Result<()> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                     "selector": {"app": "backend"}, "ports": [{"port": 8080, "protocol": "TCP"}]}
        }))?;
        self.services().create(&PostParams::default(), &svc).await?;
        Ok(())
    }

    /// Creates a LoadBalancer Service for the backends with these annotations and
    /// extra spec fields (`ipFamilyPolicy`, `externalTrafficPolicy`, ...).
    pub async fn create_service_with(
        &self,
        name: &str,
        annotations: Value,
        spec: Value,
    ) -> anyhow::Result<()> {
        let mut body = json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                     "selector": {"app": "backend"}, "ports": [{"port": 8080, "protocol": "TCP"}]}
        });
        if let (Some(dst), Some(src)) = (body["spec"].as_object_mut(), spec.as_object()) {
            for (k, v) in src {
                dst.insert(k.clone(), v.clone());
            }
        }
        let svc: Service = serde_json::from_value(body)?;
        self.services().create(&PostParams::default(), &svc).await?;
        Ok(())
    }

    /// Re-applies the lab's RouterConfigs (as [`Lab::up`] writes them) with
    /// `spec.advertise`: which kinds of Service address the nodes announce.
    pub async fn set_advertise(&self, advertise: Value) -> anyhow::Result<()> {
        self.apply_router_configs(Some(advertise)).await
    }

    /// One RouterConfig per routing daemon in use (`lab-bird`, `lab-frr`), selecting the
    /// nodes that run it, with `spec.advertise` when given.
    async fn apply_router_configs(&self, advertise: Option<Value>) -> anyhow::Result<()> {
        for kind in [Kind::Bird, Kind::Frr] {
            if !self.opts.nodes.contains(&kind) {
                continue;
            }
            let mut spec = json!({
                "asn": 64512,
                "daemon": kind.name(),
                "nodeSelector": {"matchLabels": {"lab.routelb.io/daemon": kind.name()}},
            });
            if let Some(a) = &advertise {
                spec["advertise"] = a.clone();
            }
            let name = format!("lab-{}", kind.name());
            self.apply_routelb("RouterConfig", "routerconfigs", &name, spec)
                .await?;
        }
        Ok(())
    }

    /// Creates a ClusterIP Service for the backends (port 8080) at a fixed cluster IP;
    /// `local`: `internalTrafficPolicy: Local`.
    pub async fn create_cluster_ip_service(
        &self,
        name: &str,
        ip: IpAddr,
        local: bool,
    ) -> anyhow::Result<()> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                     "ipFamilyPolicy": "SingleStack",
                     "internalTrafficPolicy": if local { "Local" } else { "Cluster" },
                     "selector": {"app": "backend"}, "ports": [{"port": 8080, "protocol": "TCP"}]}
        }))?;
        self.services().create(&PostParams::default(), &svc).await?;
        Ok(())
    }

    /// Waits for a Service's external addresses (all of them, once `n` are there).
    pub async fn external_ips(
        &self,
        name: &str,
        n: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<IpAddr>> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.services().get(name).await {
                let ips: Vec<IpAddr> = s
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|l| l.ingress)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| i.ip?.parse().ok())
                    .collect();
                if ips.len() >= n {
                    return Ok(ips);
                }
            }
            if start.elapsed() > limit {
                bail!("Service {name} has fewer than {n} external addresses after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for a Service's external address.
    pub async fn external_ip(&self, name: &str, limit: Duration) -> anyhow::Result<IpAddr> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.services().get(name).await
                && let Some(ip) = s
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|l| l.ingress)
                    .and_then(|i| i.into_iter().find_map(|i| i.ip))
            {
                return Ok(ip.parse()?);
            }
            if start.elapsed() > limit {
                bail!("Service {name} has no external address after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn delete_service(&self, name: &str) -> anyhow::Result<()> {
        self.services()
            .delete(name, &DeleteParams::default())
            .await?;
        Ok(())
    }

    /// Publishes the Service's endpoints: one ready backend on each listed node.
    pub async fn endpoints(&self, service: &str, nodes: &[usize]) -> anyhow::Result<()> {
        let eps: Vec<Value> = nodes
            .iter()
            .map(|i| json!({"addresses": [self.nodes[*i].address.to_string()], "nodeName": self.nodes[*i].name, "conditions": {"ready": true}}))
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-lab"), "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": eps, "ports": [{"port": 8080, "protocol": "TCP"}]
        }))?;
        Api::<EndpointSlice>::namespaced(self.client.clone(), "default")
            .patch(
                &format!("{service}-lab"),
                &PatchParams::apply("routelb-lab").force(),
                &Patch::Apply(&slice),
            )
            .await?;
        Ok(())
    }

    /// Opens `count` connections from the client to `addr:8080`; returns how many each
    /// node answered.
    pub fn connect(&self, addr: IpAddr, count: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        self.connect_from(&self.client_netns, addr, count)
    }

    /// [`Lab::connect`] from another namespace (the LAN client: [`Lab::lan_netns`]).
    pub fn connect_from(
        &self,
        netns: &str,
        addr: IpAddr,
        count: usize,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        in_netns(netns, move || {
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..count {
                let stream = TcpStream::connect_timeout(
                    &SocketAddr::new(addr, 8080),
                    Duration::from_secs(2),
                );
                let name = match stream {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        let _ = BufReader::new(s).read_line(&mut line);
                        line.trim().to_string()
                    }
                    Err(e) => format!("error: {}", e.kind()),
                };
                *tally
                    .entry(if name.is_empty() {
                        "no answer".into()
                    } else {
                        name
                    })
                    .or_default() += 1;
            }
            tally
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    }

    /// Connects to `addr` from the client namespace over and over (every 10 ms, 1 s
    /// timeout) until stopped: what a user's traffic sees.
    pub fn client_loop(&self, addr: IpAddr) -> ClientLoop {
        self.client_loop_from(
            &self.client_netns,
            addr,
            Duration::from_millis(10),
            Duration::from_secs(1),
        )
    }

    /// [`Lab::client_loop`] from another namespace, pausing `every` between connections
    /// and giving each `timeout` (short timeouts time a failover finely: a connection
    /// stuck on a lost SYN would wait a second for its retransmission); each result is
    /// also timed (see [`ClientLoop::results`]).
    pub fn client_loop_from(
        &self,
        netns: &str,
        addr: IpAddr,
        every: Duration,
        timeout: Duration,
    ) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let timed = log.clone();
        let handle = in_netns(netns, move || {
            let mut tally: BTreeMap<String, usize> = BTreeMap::new();
            while !flag.load(Ordering::SeqCst) {
                let stream = TcpStream::connect_timeout(&SocketAddr::new(addr, 8080), timeout);
                let name = match stream {
                    Ok(s) => {
                        let _ = s.set_read_timeout(Some(timeout));
                        let mut line = String::new();
                        let _ = BufReader::new(s).read_line(&mut line);
                        if line.trim().is_empty() {
                            "failed: no answer".to_string()
                        } else {
                            line.trim().to_string()
                        }
                    }
                    Err(e) => format!("failed: {}", e.kind()),
                };
                timed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), name.clone()));
                *tally.entry(name).or_default() += 1;
                std::thread::sleep(every);
            }
            tally
        });
        ClientLoop { stop, handle, log }
    }

    /// The node answering `addr` to the LAN client now: three connections succeed through
    /// it and the client's neighbour entry names its MAC.
    pub fn lan_answer(&self, addr: IpAddr) -> Option<usize> {
        let tally = self.connect_from(&self.lan_netns, addr, 3).ok()?;
        let (name, n) = tally.iter().next()?;
        let i = self.nodes.iter().position(|x| &x.name == name)?;
        (tally.len() == 1 && *n == 3 && self.lan_neighbour(addr) == Some(i)).then_some(i)
    }

    /// A node's LAN MAC address (its eth0).
    pub fn node_mac(&self, i: usize) -> anyhow::Result<String> {
        let out = in_ns(&self.nodes[i].netns, &["ip", "-o", "link", "show", "eth0"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .context("no link/ether in ip link")
    }

    /// The node (index) whose MAC the LAN client has for `addr`, if any.
    pub fn lan_neighbour(&self, addr: IpAddr) -> Option<usize> {
        let out = in_ns(&self.lan_netns, &["ip", "neigh", "show", &addr.to_string()]).ok()?;
        let mac = out
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)?
            .to_string();
        (0..self.nodes.len()).find(|i| self.node_mac(*i).ok().as_deref() == Some(mac.as_str()))
    }

    /// Addresses of local pools on a node's LAN interface (routelb's, protocol 249).
    pub fn node_lan_addrs(&self, i: usize) -> BTreeSet<IpAddr> {
        in_ns(
            &self.nodes[i].netns,
            &["ip", "-o", "addr", "show", "dev", "eth0"],
        )
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("noprefixroute"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let a = w.iter().position(|x| *x == "inet" || *x == "inet6")?;
            w.get(a + 1)?.split('/').next()?.parse().ok()
        })
        .collect()
    }

    /// Runs a command in a lab namespace; its stdout.
    pub fn exec(&self, netns: &str, args: &[&str]) -> anyhow::Result<String> {
        in_ns(netns, args)
    }

    /// A node agent's `/metrics`.
    pub fn agent_metrics(&self, i: usize) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.nodes[i].health_port)) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// Reads a node's agent log (for diagnosis).
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("agent.log")).unwrap_or_default()
    }

    /// The log of an allocator replica (`allocator` is the first).
    pub fn allocator_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Tears everything down.
    pub fn shutdown(mut self) {
        self.teardown();
    }

    /// Keeps the lab for `scripts/lab exec` and `scripts/lab down`: names its hosts and
    /// records this process as the one that holds it.
    pub fn keep(&self) -> anyhow::Result<()> {
        let mut hosts = String::new();
        for (i, r) in self.routers.iter().enumerate() {
            let name = if i == 0 {
                "router".to_string()
            } else {
                format!("router-{}", i + 1)
            };
            hosts.push_str(&format!("{name} {}\n", r.netns));
        }
        for n in &self.nodes {
            hosts.push_str(&format!("{} {}\n", n.name, n.netns));
        }
        hosts.push_str(&format!("client {}\n", self.client_netns));
        if self.opts.l2 {
            hosts.push_str(&format!("lan {}\n", self.lan_netns));
        }
        std::fs::write(self.dir.join("hosts"), hosts)?;
        std::fs::write(self.dir.join("keeper"), std::process::id().to_string())?;
        Ok(())
    }

    fn teardown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for b in self.backends.drain(..) {
            let _ = b.join();
        }
        // Agents and the allocator first (they talk to the daemons), then the daemons.
        let mut procs = std::mem::take(&mut self.procs);
        procs.sort_by_key(|p| !(p.name.starts_with("agent") || p.name == "allocator"));
        drop(procs);
        for ns in self.netns.drain(..) {
            if let Ok(pids) = ip(&["netns", "pids", &ns]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_changes_read_ip_monitor_with_and_without_timestamps() {
        let log = "[2026-12-02T07:26:38.474502] 203.0.113.10 proto bird metric 32 \n\tnexthop via 192.0.2.12 dev br0 weight 1 \n\tnexthop via 192.0.2.13 dev br0 weight 1 \n203.0.113.99 via 192.0.2.11 dev br0 proto bird\nDeleted 203.0.113.10 via 192.0.2.13 dev br0 proto bird metric 32\n";
        let ip: IpAddr = "203.0.113.10".parse().unwrap();
        let changes = route_changes(log, ip);
        let hops = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse().unwrap())
                .collect::<BTreeSet<IpAddr>>()
        };
        assert_eq!(
            changes,
            [
                (false, hops(&["192.0.2.12", "192.0.2.13"])),
                (true, hops(&["192.0.2.13"])),
            ]
        );
    }
}
