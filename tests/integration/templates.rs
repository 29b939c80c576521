//! The routing templates: golden files over several contexts, accepted by the real
//! daemons' parsers, and values crafted to inject configuration neutralised.

use std::path::{Path, PathBuf};
use std::process::Command;

use routelb_core::crd::{AddressPoolSpec, BGPPeerSpec, RouterConfigSpec};
use routelb_core::net::KernelContract;
use routelb_core::routing::context::{Inputs, NodeInput, build};
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn contexts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("templates/testdata"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "golden contexts missing");
    v
}

/// Checks a rendered configuration with the daemon's own parser.
fn daemon_accepts(daemon: &str, text: &str, tag: &str) {
    let dir = std::env::temp_dir().join(format!("routelb-tpl-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{daemon}.conf"));
    std::fs::write(&file, text).unwrap();
    let out = match daemon {
        "bird" => Command::new("bird").args(["-p", "-c"]).arg(&file).output(),
        _ => Command::new("vtysh")
            .arg("--dryrun")
            .arg("-f")
            .arg(&file)
            .output(),
    }
    .unwrap_or_else(|e| panic!("run {daemon} (install bird2 and frr): {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{daemon} rejects the rendering of {tag}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn templates_render_as_recorded_and_the_daemons_accept_them() {
    for ctx in contexts() {
        let stem = ctx.file_stem().unwrap().to_string_lossy().to_string();
        for daemon in ["bird", "frr"] {
            let template = root().join(format!("templates/{daemon}.conf.tera"));
            let text = routelb::cli::render_files(&template, &ctx).unwrap();
            let golden = ctx.with_file_name(format!("{stem}.{daemon}.conf"));
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden, &text).unwrap();
            }
            let recorded = std::fs::read_to_string(&golden).unwrap_or_default();
            assert!(
                recorded == text,
                "{} differs from the rendering (UPDATE_GOLDEN=1 cargo test to accept)",
                golden.display()
            );
            daemon_accepts(daemon, &text, &format!("{stem}-{daemon}"));
        }
    }
}

#[test]
fn the_documented_cluster_ip_community_example_works() {
    let doc = std::fs::read_to_string(root().join("docs/templates.md")).unwrap();
    let start = doc
        .find("<!-- example: cluster-ip-community -->")
        .expect("the example in docs/templates.md");
    let body = &doc[start..];
    let open = body.find("```\n").unwrap() + 4;
    let snippet = &body[open..open + body[open..].find("```").unwrap()];
    let shipped = std::fs::read_to_string(root().join("templates/bird.conf.tera")).unwrap();
    let anchor = "  accept;\n}";
    assert!(shipped.contains(anchor), "routelb_export ends with accept");
    let edited = shipped.replacen(anchor, &format!("{snippet}\n{anchor}"), 1);
    let dir = std::env::temp_dir().join(format!("routelb-doc-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("bird.conf.tera");
    std::fs::write(&template, edited).unwrap();
    let text = routelb::cli::render_files(&template, &root().join("templates/testdata/full.json"))
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        text.contains("if net ~ [ 10.96.0.0/12+ ] then bgp_community.add((64512, 96));"),
        "{text}"
    );
    assert!(text.contains("if net ~ [ fd00:10:96::/112+ ]"), "{text}");
    daemon_accepts("bird", &text, "doc-example");
}

#[test]
fn the_render_command_prints_or_says_what_is_wrong() {
    let run = |template: &Path, context: &Path| {
        Command::new(env!("CARGO_BIN_EXE_routelb"))
            .arg("render")
            .arg("--template")
            .arg(template)
            .arg("--context")
            .arg(context)
            .output()
            .unwrap()
    };
    let ok = run(
        &root().join("templates/bird.conf.tera"),
        &root().join("templates/testdata/basic.json"),
    );
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("neighbor 192.0.2.1 as 64500;"));
    let dir = std::env::temp_dir().join(format!("routelb-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("broken.tera");
    std::fs::write(&broken, "router id {{ router_idd }};\n").unwrap();
    let bad = run(&broken, &root().join("templates/testdata/basic.json"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("router_idd"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let old = dir.join("old.json");
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("templates/testdata/basic.json")).unwrap(),
    )
    .unwrap();
    v["version"] = json!(99);
    std::fs::write(&old, v.to_string()).unwrap();
    let versioned = run(&root().join("templates/bird.conf.tera"), &old);
    assert!(String::from_utf8_lossy(&versioned.stderr).contains("context version 99"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn crafted_cluster_values_cannot_inject_routing_configuration() {
    let node = NodeInput {
        name: "node-1".into(),
        labels: [(
            "role".to_string(),
            "x\"; };\nprotocol static evil { ipv4; route 0.0.0.0/0 blackhole; }".to_string(),
        )]
        .into(),
        addresses: vec!["192.0.2.11".parse().unwrap()],
    };
    let rc: RouterConfigSpec = serde_json::from_value(json!({"asn": 64512})).unwrap();
    let peer: BGPPeerSpec = serde_json::from_value(
        json!({"address": "192.0.2.1", "asn": 64500, "passwordSecretRef": {"name": "bgp"}}),
    )
    .unwrap();
    let pools: Vec<(String, AddressPoolSpec)> = vec![(
        "public".into(),
        serde_json::from_value(json!({"addresses": ["203.0.113.0/24"]})).unwrap(),
    )];
    // A password that tries to close the string and open a protocol is refused.
    let evil = |_: &routelb_core::crd::SecretKeyRef| {
        Ok("pw\"; } protocol static evil { ipv4; }".to_string())
    };
    let inputs =
        |peers: &[(String, BGPPeerSpec)],
         password: &dyn Fn(&routelb_core::crd::SecretKeyRef) -> Result<String, String>| {
            build(&Inputs {
                node: &node,
                router: ("default", &rc),
                kernel: &KernelContract::default(),
                peers,
                pools: &pools,
                password,
                previous: None,
            })
            .unwrap()
        };
    let refused = inputs(&[("router".into(), peer.clone())], &evil);
    assert_eq!(refused.problems.len(), 1);
    let problem = refused.problems[0].to_string();
    assert!(
        problem.contains("BGPPeer router: passwordSecretRef"),
        "{problem}"
    );
    assert!(refused.context.peers.is_empty(), "the peer is left out");
    // A name with characters BIRD would read as syntax becomes a safe identifier; the
    // label cannot reach the template.
    let ctx = inputs(&[("we.ird-name".into(), peer)], &|_| Ok("fine-pw".into())).context;
    assert_eq!(ctx.peers[0].id, "peer_we_ird_name");
    assert!(ctx.node.labels.is_empty());
    let template = std::fs::read_to_string(root().join("templates/bird.conf.tera")).unwrap();
    let text = routelb_core::routing::render(&template, &ctx).unwrap();
    assert!(!text.contains("evil"));
    daemon_accepts("bird", &text, "crafted");
}

/// Every BGP knob renders as documented, on both daemons, including the values that
/// are false to a template's truth test (0) and the defaults.
#[test]
fn every_knob_means_what_the_docs_say_on_both_daemons() {
    let ctx = root().join("templates/testdata/knobs.json");
    let render = |daemon: &str| {
        routelb::cli::render_files(&root().join(format!("templates/{daemon}.conf.tera")), &ctx)
            .unwrap()
    };
    let bird = render("bird");
    for want in [
        "hold time 0;",
        "hold time 9;",
        "bgp_local_pref = 0;",
        "bfd { min rx interval 100 ms; min tx interval 150 ms; multiplier 5; };",
        "bfd { min rx interval 1000 ms; min tx interval 1000 ms; multiplier 3; };",
    ] {
        assert!(bird.contains(want), "BIRD lacks {want:?}:\n{bird}");
    }
    assert!(!bird.contains("port 0"), "BIRD cannot take port 0:\n{bird}");
    assert_eq!(
        bird.matches("graceful restart on;").count(),
        1,
        "only the peer that asks"
    );
    let frr = render("frr");
    for want in [
        "neighbor 192.0.2.1 timers 0 0",
        "neighbor 192.0.2.2 timers 3 9",
        "set local-preference 0",
        "neighbor 192.0.2.1 bfd 5 100 150",
        "neighbor 192.0.2.2 bfd 3 1000 1000",
        "neighbor 192.0.2.1 graceful-restart\n",
        "neighbor 192.0.2.2 graceful-restart-disable",
        // The node's forwarding survives bgpd: the F bit, or routers drop its routes.
        "bgp graceful-restart preserve-fw-state",
    ] {
        assert!(frr.contains(want), "FRR lacks {want:?}:\n{frr}");
    }
    assert!(
        !frr.contains("bgp graceful-restart\n") && !frr.contains("bgp graceful-restart-disable"),
        "no global graceful restart:\n{frr}"
    );
    assert_eq!(
        frr.matches("graceful-restart\n").count(),
        1,
        "only the peer that asks:\n{frr}"
    );
    // No holdTime on the BGPPeer renders the documented 90 s, not a daemon's default.
    let node = NodeInput {
        name: "n".into(),
        labels: Default::default(),
        addresses: vec!["192.0.2.11".parse().unwrap()],
    };
    let rc: RouterConfigSpec = serde_json::from_value(json!({"asn": 64512})).unwrap();
    let peer: BGPPeerSpec =
        serde_json::from_value(json!({"address": "192.0.2.1", "asn": 64500})).unwrap();
    let built = build(&Inputs {
        node: &node,
        router: ("default", &rc),
        kernel: &KernelContract::default(),
        peers: &[("p".into(), peer)],
        pools: &[],
        password: &|_| Err("none".into()),
        previous: None,
    })
    .unwrap();
    let template = std::fs::read_to_string(root().join("templates/bird.conf.tera")).unwrap();
    let text = routelb_core::routing::render(&template, &built.context).unwrap();
    assert!(text.contains("hold time 90;"), "{text}");
    let template = std::fs::read_to_string(root().join("templates/frr.conf.tera")).unwrap();
    let mut frr_ctx = built.context.clone();
    frr_ctx.daemon = "frr".into();
    let text = routelb_core::routing::render(&template, &frr_ctx).unwrap();
    assert!(text.contains("neighbor 192.0.2.1 timers 30 90"), "{text}");
    daemon_accepts("frr", &text, "default-hold");
}

mod fuzz {
    //! Arbitrary values in every field a cluster object can carry into the context: the
    //! rendered BIRD and FRR configurations are accepted by the daemons' own parsers
    //! (the bad objects refused, named, and left out), and never carry anything that did
    //! not come from the template (every crafted value holds the marker EVIL).

    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("ROUTELB_FUZZ_CASES")
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .map_or(40, |c| c.min(400))
    }

    fn evil() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("EVIL\"; } protocol static x { ipv4; route 0.0.0.0/0 blackhole; }".to_string()),
            Just("EVIL\n!\nrouter bgp 1".to_string()),
            "EVIL[ -~]{0,12}",
            "[ -~]{0,6}EVIL",
        ]
    }

    fn address() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
            any::<[u16; 8]>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
            evil(),
        ]
    }

    fn community() -> impl Strategy<Value = String> {
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("{a}:{b}")),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("{a}:{b}")),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| format!("{a}:{b}:{c}")),
            evil(),
        ]
    }

    fn peer() -> impl Strategy<Value = serde_json::Value> {
        (
            address(),
            any::<u32>(),
            proptest::option::of(any::<u16>()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of((0u32..100_000, 0u32..100_000, any::<u8>())),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(evil()),
        )
            .prop_map(|(address, asn, port, hold, multihop, bfd, gr, addpath, pw)| {
                let mut v = json!({"address": address, "asn": asn, "gracefulRestart": gr, "addPaths": addpath});
                if let Some(p) = port { v["port"] = json!(p); }
                if let Some(h) = hold { v["holdTime"] = json!(h); }
                if let Some(m) = multihop { v["ebgpMultihop"] = json!(m); }
                if let Some((rx, tx, mult)) = bfd {
                    v["bfd"] = json!({"receiveInterval": rx, "transmitInterval": tx, "detectMultiplier": mult});
                }
                if pw.is_some() { v["passwordSecretRef"] = json!({"name": "pw"}); }
                v
            })
    }

    fn pool() -> impl Strategy<Value = serde_json::Value> {
        (
            proptest::collection::vec(
                prop_oneof![
                    (any::<[u8; 4]>(), 16u8..=32).prop_map(|(a, l)| {
                        let p = routelb_core::net::Prefix::network(std::net::IpAddr::from(a), l);
                        p.to_string()
                    }),
                    evil(),
                ],
                1..3,
            ),
            proptest::collection::vec(community(), 0..3),
            proptest::option::of(any::<u32>()),
            proptest::option::of(16u8..=32),
        )
            .prop_map(|(addresses, communities, pref, agg)| {
                let mut v = json!({"addresses": addresses, "bgp": {"communities": communities}});
                if let Some(p) = pref {
                    v["bgp"]["localPreference"] = json!(p);
                }
                if let Some(a) = agg {
                    v["aggregationLength"] = json!({"ipv4": a});
                }
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn crafted_objects_never_reach_the_configuration_and_the_rest_is_accepted(
            peers in proptest::collection::vec(peer(), 0..3),
            pools in proptest::collection::vec(pool(), 0..3),
            label in evil(),
            password in evil(),
            listen_port in proptest::option::of(any::<u16>()),
        ) {
            let node = NodeInput {
                name: "node-1".into(),
                labels: [("rack".to_string(), "a".to_string()), ("x".to_string(), label)].into(),
                addresses: vec!["192.0.2.11".parse().unwrap()],
            };
            let mut rc = json!({"asn": 64512});
            if let Some(p) = listen_port { rc["listenPort"] = json!(p); }
            let rc: RouterConfigSpec = serde_json::from_value(rc).unwrap();
            let peers: Vec<(String, BGPPeerSpec)> = peers
                .into_iter()
                .enumerate()
                .filter_map(|(i, p)| Some((format!("peer-{i}"), serde_json::from_value(p).ok()?)))
                .collect();
            let pools: Vec<(String, AddressPoolSpec)> = pools
                .into_iter()
                .enumerate()
                .filter_map(|(i, p)| Some((format!("pool-{i}"), serde_json::from_value(p).ok()?)))
                .collect();
            let secret = |_: &routelb_core::crd::SecretKeyRef| Ok(password.clone());
            let built = build(&Inputs {
                node: &node,
                router: ("default", &rc),
                kernel: &KernelContract::default(),
                peers: &peers,
                pools: &pools,
                password: &secret,
                previous: None,
            });
            let Ok(built) = built else { return Ok(()) };
            for daemon in ["bird", "frr"] {
                let mut ctx = built.context.clone();
                ctx.daemon = daemon.into();
                let template = std::fs::read_to_string(root().join(format!("templates/{daemon}.conf.tera"))).unwrap();
                let text = routelb_core::routing::render(&template, &ctx).unwrap();
                // A password is a value the configuration must carry, in its one place.
                let outside: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("EVIL"))
                    .filter(|l| {
                        let t = l.trim();
                        let bird_pw = t.starts_with("password \"") && t.ends_with("\";") && t.matches('"').count() == 2;
                        let frr_pw = t.starts_with("neighbor ") && t.split_whitespace().nth(2) == Some("password") && t.split_whitespace().count() == 4;
                        !(bird_pw || frr_pw)
                    })
                    .collect();
                prop_assert!(outside.is_empty(), "a crafted value reached the {} configuration: {:?}", daemon, outside);
                daemon_accepts(daemon, &text, &format!("fuzz-{daemon}"));
            }
        }
    }
}
