//! kubectl conformance: a fixed script of real kubectl commands (the client users type)
//! against the fake-apiserver binary, each output checked as a real server would make it.
//! Needs `kubectl` on the PATH (CI installs it; every machine here has v1.33).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The server and a scratch directory, gone when the test ends, pass or fail.
struct Fixture {
    server: Child,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    fn start(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("kubectl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        let server = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let f = Fixture { server, dir };
        let start = Instant::now();
        while !kubeconfig.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no kubeconfig written"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .current_dir(ROOT);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let out: Output = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e} (is kubectl installed?)"));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "kubectl {args:?} failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// Runs a command that must fail; its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_ne!(r.code, 0, "kubectl {args:?} succeeded:\n{}", r.stdout);
        r.stderr
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p.to_str().unwrap().to_string()
    }
}

/// The words of a table's lines (header first), as kubectl aligns them.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            // Columns are separated by two or more spaces; a header like "PORT(S)" or a
            // cell like "<pending>" has none inside.
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

#[test]
fn real_kubectl_works_against_fake_apiserver() {
    let k = Fixture::start("conformance");

    // Discovery and versions.
    let v = k.ok(&["version"]);
    assert_contains(&v, "Client Version: v1.");
    assert_contains(&v, "Server Version: v1.33.0-fake");

    // apply with kubectl's default validation (the server validates fields: OpenAPI v3).
    let out = k.ok(&["apply", "-f", "deploy/crds.yaml"]);
    for crd in [
        "addresspools",
        "bgppeers",
        "routerconfigs",
        "noderoutingstatuses",
    ] {
        assert_contains(
            &out,
            &format!("customresourcedefinition.apiextensions.k8s.io/{crd}.routelb.io created"),
        );
    }
    k.ok(&["apply", "-f", "deploy/00-namespace.yaml"]);
    let crds = rows(&k.ok(&["get", "crds"]));
    assert_eq!(crds[0], ["NAME", "CREATED AT"]);
    assert_eq!(crds.len(), 5, "{crds:?}");
    // Discovery in one round trip per half (aggregated, as kubectl asks for it): no
    // legacy per-group-version documents are fetched.
    let fresh = k.dir.join("fresh-cache");
    let r = k.run(&[
        "api-resources",
        "-v=6",
        "--cache-dir",
        fresh.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let urls: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| l.split("url=\"").nth(1))
        .filter_map(|u| u.split('"').next())
        .collect();
    assert!(urls.iter().any(|u| u.contains("/apis?")), "{urls:?}");
    let legacy: Vec<&&str> = urls
        .iter()
        .filter(|u| {
            // The path: /api/v1 or /apis/GROUP/VERSION are the legacy documents.
            let path = u
                .splitn(4, '/')
                .nth(3)
                .unwrap_or("")
                .split('?')
                .next()
                .unwrap_or("");
            let segs: Vec<&str> = path.split('/').collect();
            segs == ["api", "v1"] || (segs.len() == 3 && segs[0] == "apis")
        })
        .collect();
    assert!(legacy.is_empty(), "legacy discovery requests: {legacy:?}");
    let explained = k.ok(&["explain", "addresspool.spec"]);
    assert_contains(&explained, "addresses\t<[]string> -required-");
    let res = k.ok(&["api-resources"]);
    let svc_line = res
        .lines()
        .find(|l| l.starts_with("services "))
        .expect("services in api-resources");
    assert_eq!(
        rows(svc_line)[0],
        ["services", "svc", "v1", "true", "Service"]
    );
    assert_contains(&res, "addresspools");

    // A manifest with a field no schema declares is refused, as a real server does.
    let bad = k.file(
        "bad-pool.yaml",
        "apiVersion: routelb.io/v1alpha1\nkind: AddressPool\nmetadata: {name: bad}\n\
         spec: {addresses: [192.0.2.0/28], colour: red}\n",
    );
    let err = k.fails(&["apply", "-f", &bad]);
    assert_contains(&err, "strict decoding error: unknown field \"spec.colour\"");
    let err = k.fails(&["apply", "--server-side", "-f", &bad]);
    assert_contains(&err, ".spec.colour: field not declared in schema");
    let err = k.fails(&["create", "-f", &bad]);
    assert_contains(&err, "unknown field \"spec.colour\"");

    // The typed commands (protobuf bodies, both ways).
    let r = k.run(&["create", "namespace", "wire", "-v=8"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr
            .matches("Content-Type: application/vnd.kubernetes.protobuf")
            .count(),
        2,
        "a protobuf request and a protobuf answer:\n{}",
        r.stderr
    );
    assert_eq!(
        k.ok(&["create", "namespace", "demo"]),
        "namespace/demo created\n"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "service",
            "loadbalancer",
            "web",
            "-n",
            "demo",
            "--tcp=80:8080"
        ]),
        "service/web created\n"
    );
    assert_eq!(
        k.ok(&[
            "create",
            "secret",
            "generic",
            "peer-password",
            "-n",
            "routelb-system",
            "--from-literal=password=s3cret",
        ]),
        "secret/peer-password created\n"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "secret",
            "peer-password",
            "-n",
            "routelb-system",
            "-o",
            "jsonpath={.type} {.data.password}",
        ]),
        "Opaque czNjcmV0"
    );

    for (args, out) in [
        (
            &["create", "serviceaccount", "viewer", "-n", "demo"][..],
            "serviceaccount/viewer created\n",
        ),
        (
            &[
                "create",
                "role",
                "svc-reader",
                "-n",
                "demo",
                "--verb=get,list",
                "--resource=services",
            ][..],
            "role.rbac.authorization.k8s.io/svc-reader created\n",
        ),
        (
            &[
                "create",
                "rolebinding",
                "viewer",
                "-n",
                "demo",
                "--role=svc-reader",
                "--serviceaccount=demo:viewer",
            ][..],
            "rolebinding.rbac.authorization.k8s.io/viewer created\n",
        ),
        (
            &[
                "create",
                "pdb",
                "web",
                "-n",
                "demo",
                "--selector=app=web",
                "--min-available=0",
            ][..],
            "poddisruptionbudget.policy/web created\n",
        ),
    ] {
        assert_eq!(k.ok(args), out);
    }
    let binding = rows(&k.ok(&["get", "rolebinding", "viewer", "-n", "demo", "-o", "wide"]));
    assert_eq!(
        binding[1],
        [
            "viewer",
            "Role/svc-reader",
            binding[1][2].as_str(),
            "demo/viewer"
        ]
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pdb",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.minAvailable}"
        ]),
        "0",
        "a pointer's zero survives the protobuf body"
    );

    // Pools and their printer columns.
    k.ok(&["apply", "-f", "examples/addresspools.yaml"]);
    let pools = rows(&k.ok(&["get", "addresspools"]));
    assert_eq!(
        pools[0],
        [
            "NAME",
            "MODE",
            "IPV4 USED",
            "IPV4 FREE",
            "IPV6 USED",
            "IPV6 FREE",
            "READY",
            "AGE"
        ]
    );
    assert!(pools.iter().any(|r| r[0] == "public"), "{pools:?}");

    // get: the server's Table, -o wide, -o yaml, -o jsonpath, get all.
    let svc = rows(&k.ok(&["get", "svc", "-n", "demo"]));
    assert_eq!(
        svc[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(svc[1][..2], ["web", "LoadBalancer"]);
    assert!(svc[1][2].starts_with("10.96."), "{svc:?}");
    assert_eq!(svc[1][3], "<pending>");
    assert!(
        svc[1][4].starts_with("80:3") && svc[1][4].ends_with("/TCP"),
        "{svc:?}"
    );
    let wide = rows(&k.ok(&["get", "svc", "web", "-n", "demo", "-o", "wide"]));
    assert_eq!(wide[0].last().unwrap(), "SELECTOR");
    assert_eq!(wide[1].last().unwrap(), "app=web");
    let yaml = k.ok(&["get", "svc", "web", "-n", "demo", "-o", "yaml"]);
    assert_contains(&yaml, "kind: Service");
    assert_contains(&yaml, "type: LoadBalancer");
    assert_contains(&yaml, "targetPort: 8080");
    let all = k.ok(&["get", "all", "-n", "demo"]);
    assert_contains(&all, "service/web");

    // --watch sees the address arrive; kubectl wait for it by JSONPath.
    let mut watch = k
        .command(&["get", "svc", "web", "-n", "demo", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.10"}]}}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "wait",
            "--for=jsonpath={.status.loadBalancer.ingress[0].ip}=203.0.113.10",
            "svc/web",
            "-n",
            "demo",
            "--timeout=10s",
        ]),
        "service/web condition met\n"
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = watch.kill();
    let watched = watch.wait_with_output().unwrap();
    let watched = rows(&String::from_utf8_lossy(&watched.stdout));
    assert_eq!(watched[0][0], "NAME");
    assert_eq!(watched[1][3], "<pending>", "{watched:?}");
    assert_eq!(watched.last().unwrap()[3], "203.0.113.10", "{watched:?}");

    // label, annotate, patch (strategic merges ports by port; JSON patch), selectors.
    assert_eq!(
        k.ok(&["label", "svc", "web", "-n", "demo", "tier=frontend"]),
        "service/web labeled\n"
    );
    assert_eq!(
        k.ok(&[
            "annotate",
            "svc",
            "web",
            "-n",
            "demo",
            "routelb.io/pool=public"
        ]),
        "service/web annotated\n"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "-n",
            "demo",
            "-l",
            "tier=frontend",
            "-o",
            "name"
        ]),
        "service/web\n"
    );
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "demo",
        "-p",
        r#"{"spec":{"ports":[{"port":443,"targetPort":8443}]}}"#,
    ]);
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/externalTrafficPolicy","value":"Local"}]"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.ports[*].port} {.spec.externalTrafficPolicy} {.metadata.annotations.routelb\\.io/pool}",
        ]),
        "80 443 Local public"
    );

    // Events: kubectl get events and describe list them.
    let uid = k.ok(&[
        "get",
        "svc",
        "web",
        "-n",
        "demo",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let event = k.file(
        "event.yaml",
        &format!(
            "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: web.assigned, namespace: demo}}\n\
             eventTime: \"2026-01-01T00:00:00.000000Z\"\nreportingController: routelb.io/allocator\n\
             reportingInstance: allocator-0\naction: Assign\nreason: Assigned\ntype: Normal\n\
             note: Assigned 203.0.113.10 from pool public\n\
             regarding: {{apiVersion: v1, kind: Service, namespace: demo, name: web, uid: {uid}}}\n"
        ),
    );
    k.ok(&["create", "-f", &event]);
    let events = rows(&k.ok(&["get", "events", "-n", "demo"]));
    assert_eq!(
        events[0],
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert_eq!(
        events[1][1..],
        [
            "Normal",
            "Assigned",
            "service/web",
            "Assigned 203.0.113.10 from pool public"
        ]
    );
    let described = k.ok(&["describe", "svc", "web", "-n", "demo"]);
    assert_contains(&described, "LoadBalancer Ingress:");
    assert_contains(&described, "203.0.113.10");
    assert_contains(&described, "Events:");
    assert_contains(&described, "Assigned 203.0.113.10 from pool public");

    // Declarative: apply, diff, server-side apply.
    let manifest = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: demo}\n\
                    spec:\n  type: LoadBalancer\n  selector: {app: api}\n  ports: [{port: 80, targetPort: 8080}]\n";
    let path = k.file("api.yaml", manifest);
    assert_eq!(k.ok(&["apply", "-f", &path]), "service/api created\n");
    assert_eq!(k.ok(&["diff", "-f", &path]), "");
    let changed = k.file("api2.yaml", &manifest.replace("app: api", "app: api2"));
    let diff = k.run(&["diff", "-f", &changed]);
    assert_eq!(diff.code, 1, "{}", diff.stderr);
    assert_contains(&diff.stdout, "+    app: api2");
    assert_eq!(
        k.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &changed
        ]),
        "service/api serverside-applied\n"
    );
    assert_eq!(k.ok(&["diff", "-f", &changed]), "");
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "api",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.selector.app} {.spec.ports[*].port}"
        ]),
        "api2 80"
    );

    // The install, plain and by kustomize, and switching it to FRR and back: kubectl's
    // patches (from the published patch merge keys) leave exactly what the manifests say.
    k.ok(&["apply", "-f", "deploy/"]);
    let ds = rows(&k.ok(&["get", "ds,deploy", "-n", "routelb-system"]));
    assert_eq!(
        ds[0],
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE"
        ]
    );
    assert_eq!(ds[1][0], "daemonset.apps/routelb-agent");
    assert!(
        ds.iter()
            .any(|r| r.first().map(String::as_str) == Some("deployment.apps/routelb-allocator")),
        "{ds:?}"
    );
    for (dir, containers) in [
        ("examples/kustomize/frr", "agent frr"),
        ("deploy/", "agent bird"),
    ] {
        k.ok(&["apply", "-k", dir]);
        let live = k.ok(&[
            "get",
            "ds",
            "routelb-agent",
            "-n",
            "routelb-system",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}",
        ]);
        assert_eq!(live, containers, "after kubectl apply -k {dir}");
        let diff = k.run(&["diff", "-k", dir]);
        assert_eq!(
            diff.code, 0,
            "kubectl diff -k {dir}:\n{}{}",
            diff.stdout, diff.stderr
        );
    }

    // delete.
    assert_eq!(
        k.ok(&["delete", "svc", "web", "api", "-n", "demo"]),
        "service \"web\" deleted\nservice \"api\" deleted\n"
    );
    let none = k.run(&["get", "svc", "-n", "demo"]);
    assert_eq!(none.code, 0);
    assert_contains(&none.stderr, "No resources found in demo namespace.");
}
