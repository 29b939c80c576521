//! `scripts/lab --keep` as a user meets it: the kept lab answers the real kubectl, a
//! Service created with it is routed by the router, `exec` reaches the lab's hosts and
//! `down` ends it, leaving nothing behind. (Its own test binary: `down` removes every lab
//! on the machine, so no other lab test may run beside it.)

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Ends the kept lab if the test fails before `down` does.
struct Keeper(Child);

impl Drop for Keeper {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let start = Instant::now();
            while self.0.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn lab_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_routelb-lab"))
        .args(args)
        .output()
        .unwrap()
}

fn kubectl(kubeconfig: &str, args: &[&str]) -> String {
    lab::kubectl(std::path::Path::new(kubeconfig), args).unwrap()
}

/// Polls `f` for up to 30 s; a failure shows what it saw last.
fn poll<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if start.elapsed() > Duration::from_secs(30) => {
                panic!("{what}: not after 30 s; last seen:\n{seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn a_kept_lab_is_a_kubectl_playground_until_down() {
    let routelb = PathBuf::from(REPO).join("target/debug/routelb");
    let mut child = Command::new(env!("CARGO_BIN_EXE_routelb-lab"))
        .args([
            "demo",
            "--keep",
            "--connections",
            "9",
            "--repo",
            REPO,
            "--routelb",
        ])
        .arg(&routelb)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let keeper = Keeper(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut kubeconfig = None;
    let start = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(90).saturating_sub(start.elapsed()))
            .expect("the kept lab says how to end it");
        println!("{line}");
        if let Some(k) = line.strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(k.to_string());
        }
        if line == "sudo scripts/lab down" {
            break;
        }
    }
    let kubeconfig = kubeconfig.expect("the kept lab prints its KUBECONFIG");
    let dir = PathBuf::from(&kubeconfig).parent().unwrap().to_path_buf();
    let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
    let netns: Vec<String> = hosts
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, ns)| ns.to_string()))
        .collect();
    assert!(
        hosts.starts_with("router ") && hosts.contains("\nnode-1 ") && hosts.contains("\nclient "),
        "{hosts}"
    );

    // The demo's Service is there, with its address; a new one gets one and is routed.
    let demo = kubectl(&kubeconfig, &["get", "svc", "demo"]);
    assert!(
        demo.contains("LoadBalancer") && !demo.contains("<pending>"),
        "{demo}"
    );
    kubectl(
        &kubeconfig,
        &["create", "service", "loadbalancer", "web", "--tcp=80:8080"],
    );
    let ip = poll("web gets an address", || {
        let ip = kubectl(
            &kubeconfig,
            &[
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
        );
        if ip.is_empty() {
            Err(kubectl(&kubeconfig, &["get", "svc", "web", "-o", "yaml"]))
        } else {
            Ok(ip)
        }
    });
    let route = poll("the router spreads web over the three nodes", || {
        let out = lab_cmd(&["exec", "router", "ip", "route", "show", &ip]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.matches("nexthop via").count() == 3 {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    println!("{route}");
    let table = lab_cmd(&["exec", "node-1", "ip", "route", "show", "table", "200"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&ip));
    // The rest of the README's session: describe lists each node's announcement, and
    // the routing objects show their columns.
    let described = poll("describe lists the three announcements", || {
        let d = kubectl(&kubeconfig, &["describe", "svc", "web"]);
        if d.contains("AddressAssigned") && d.matches("Announcing").count() == 3 {
            Ok(d)
        } else {
            Err(d)
        }
    });
    println!("{described}");
    // The sessions come up within seconds, but each node reports them at most once per
    // 5 s and the allocator sums the reports: the column fills a few seconds later.
    let objects = poll("every node's session established (3/3)", || {
        let o = kubectl(&kubeconfig, &["get", "bgppeers,routerconfigs"]);
        if o.contains("3/3") { Ok(o) } else { Err(o) }
    });
    let headers: Vec<Vec<&str>> = objects
        .lines()
        .filter(|l| l.starts_with("NAME"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        headers,
        [
            vec!["NAME", "ADDRESS", "ASN", "ESTABLISHED", "AGE"],
            vec!["NAME", "ASN", "DAEMON", "TABLE", "NODES", "AGE"]
        ],
        "{objects}"
    );
    let nowhere = lab_cmd(&["exec", "nowhere", "true"]);
    assert!(!nowhere.status.success());
    let err = String::from_utf8_lossy(&nowhere.stderr);
    assert!(err.contains("its hosts are router, node-1"), "{err}");

    // down ends the kept lab: its process, namespaces and files go.
    let out = lab_cmd(&["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keeper = keeper;
    let status = poll("the kept lab exits", || {
        keeper
            .0
            .try_wait()
            .unwrap()
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "{status:?}");
    let left = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for ns in &netns {
        assert!(!left.contains(ns.as_str()), "{ns} is left: {left}");
    }
    assert!(!dir.exists(), "{} is left", dir.display());
}
