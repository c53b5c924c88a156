//! Deployment files: the systemd units verify, the example env files list every setting, the
//! install script is idempotent and keeps configuration, and readiness/watchdog reach systemd.

mod support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quantumctl::stack::{bin_dir, Service};
use support::Stack;

const SERVICES: [(&str, &str); 3] = [
    ("quantum-intent-bridge", "intent-bridge.env"),
    ("quantum-intent-executor", "intent-executor.env"),
    ("quantum-ledger", "ledger.env"),
];

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn env_names(text: &str, pattern: &str) -> BTreeSet<String> {
    text.match_indices(pattern)
        .map(|(i, _)| {
            text[i + pattern.len()..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (unit, _) in SERVICES {
        let text = std::fs::read_to_string(deploy().join(format!("systemd/{unit}.service"))).unwrap();
        for directive in [
            "Type=notify",
            "WatchdogSec=",
            "Restart=always",
            "User=quantum",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=",
            "SystemCallFilter=",
            "CapabilityBoundingSet=\n",
            "MemoryMax=",
            "LoadCredential=redis-password:",
        ] {
            assert!(text.contains(directive), "{unit} lacks {directive:?}");
        }
        assert!(text.contains(&format!(
            "EnvironmentFile=/etc/quantum/{}",
            SERVICES.iter().find(|s| s.0 == unit).unwrap().1
        )));
        // Point ExecStart at the freshly built binary; verify checks that it exists.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        std::fs::write(dir.path().join(format!("{unit}.service")), text).unwrap();
    }
    let executor = std::fs::read_to_string(deploy().join("systemd/quantum-intent-executor.service")).unwrap();
    assert!(
        executor.contains("LoadCredential=binance-api-key:") && executor.contains("LoadCredential=binance-api-secret:")
    );
    for (unit, _) in SERVICES {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.path().join(format!("{unit}.service")))
            .output()
            .expect("systemd-analyze (Debian package systemd) must be installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.trim().is_empty(), "{unit}: {text}");
    }
}

#[test]
fn example_env_files_list_every_setting_with_no_secret() {
    for (binary, env) in SERVICES {
        let help = Command::new(bin_dir().join(binary)).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let mut expected = env_names(&help, "[env: ");
        expected.remove("REDIS_PASSWORD");
        // Trace export uses the standard OpenTelemetry variables, which --help names in its footer.
        for otel in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"] {
            assert!(help.contains(otel), "{binary} --help does not mention {otel}");
            expected.insert(otel.to_string());
        }
        let file = std::fs::read_to_string(deploy().join(format!("systemd/env/{env}"))).unwrap();
        let listed: BTreeSet<String> = file
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k.to_string())
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        assert_eq!(listed, expected, "{env} is out of date: run deploy/systemd/gen-env.sh");
        assert!(
            !file.lines().any(|l| l.starts_with("REDIS_PASSWORD")),
            "{env} must not set a password"
        );
    }
}

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((
                    path.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_script_is_idempotent_and_keeps_configuration() {
    let root = tempfile::tempdir().unwrap();
    let install = |expect: &str| {
        let out = Command::new("bash")
            .arg(deploy().join("install.sh"))
            .args([
                "--root",
                root.path().to_str().unwrap(),
                "--bin-dir",
                bin_dir().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(expect), "{text}");
    };
    install("installed");
    for (binary, env) in SERVICES {
        assert!(root.path().join(format!("usr/local/bin/{binary}")).exists());
        assert!(root
            .path()
            .join(format!("etc/systemd/system/{binary}.service"))
            .exists());
        assert!(root.path().join(format!("etc/quantum/{env}")).exists());
        let unit = std::fs::read_to_string(root.path().join(format!("etc/systemd/system/{binary}.service"))).unwrap();
        let shared = unit
            .find("EnvironmentFile=-/etc/quantum/quantum.env")
            .expect("shared env file");
        assert!(
            shared < unit.find(&format!("EnvironmentFile=/etc/quantum/{env}")).unwrap(),
            "shared first"
        );
        let cred = root
            .path()
            .join(format!("etc/quantum/credentials/{binary}.redis-password"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(std::fs::read_to_string(root.path().join("etc/quantum/quantum.env"))
        .unwrap()
        .contains("#SYMBOL_ALLOWLIST=BTCUSDT"));
    // The operator edits a setting and stores a password: a re-run keeps both, changes nothing.
    let env = root.path().join("etc/quantum/intent-bridge.env");
    std::fs::write(&env, "SYMBOL_ALLOWLIST=BTCUSDT,ETHUSDT\n").unwrap();
    let cred = root
        .path()
        .join("etc/quantum/credentials/quantum-intent-bridge.redis-password");
    std::fs::write(&cred, "s3cret\n").unwrap();
    let before = tree(root.path());
    install("nothing to do");
    assert_eq!(tree(root.path()), before);
}

#[test]
fn an_upgrade_migrates_the_bridge_allowlist_to_the_shared_one() {
    // A host installed before SYMBOL_ALLOWLIST: its bridge env file holds the allowlist.
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/quantum");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("intent-bridge.env"),
        "#INTENT_BRIDGE_ALLOWLIST=BTCUSDT\nINTENT_BRIDGE_ALLOWLIST=BTCUSDT,ETHUSDT\n",
    )
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg(deploy().join("install.sh"))
        .args(["--root", root.path().to_str().unwrap(), "--no-start", "--bin-dir"])
        .arg(bin_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("migrated INTENT_BRIDGE_ALLOWLIST=BTCUSDT,ETHUSDT"),
        "{text}"
    );
    let shared = std::fs::read_to_string(etc.join("quantum.env")).unwrap();
    assert!(shared.ends_with("SYMBOL_ALLOWLIST=BTCUSDT,ETHUSDT\n"), "{shared}");
}

#[tokio::test]
async fn readiness_watchdog_and_stopping_reach_systemd() {
    let mut stack = Stack::new().await;
    let socket_path = stack.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stack.start(
        Service::Bridge,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    while received.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        let n = socket.recv(&mut buf).expect("a notification within 30s");
        received.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(received[0].contains("READY=1"), "{received:?}");
    assert!(
        received[0].contains("STATUS=consuming quantum:stream:trade.intent"),
        "{received:?}"
    );
    assert!(stack.stop(Service::Bridge));
    let stopping = loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if !msg.contains("WATCHDOG") {
            break msg;
        }
    };
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker-compose config` of these files, as lines.
fn compose_config(files: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for f in files {
        args.extend(["-f", f]);
    }
    args.push("config");
    let out = Command::new("docker-compose")
        .args(&args)
        .current_dir(repo())
        .output()
        .expect("docker-compose (Debian package docker-compose) must be installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_offline_override_changes_only_the_images() {
    let real = compose_config(&["compose.yaml"]);
    let offline = compose_config(&["compose.yaml", "deploy/compose/offline.yaml"]);
    // Every setting, secret, ACL file, healthcheck and dependency of the real file is kept:
    // only the images (and the build target that makes the service image) differ.
    let kept: std::collections::HashSet<&String> = offline.iter().collect();
    let changed: Vec<&String> = real.iter().filter(|l| !kept.contains(l)).collect();
    for line in &changed {
        let line = line.trim();
        assert!(
            line.starts_with("image: ") || line == "target: runtime",
            "offline.yaml changes {line:?}"
        );
    }
    assert!(offline.iter().any(|l| l.trim() == "target: runtime-prebuilt"));
    assert!(offline
        .iter()
        .any(|l| l.trim() == "RUNTIME_BASE: localhost/debian-base"));
    // The real image and the offline one share one definition of what goes into it.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert_eq!(dockerfile.matches("FROM runtime-base AS").count(), 2);
    assert!(dockerfile.contains("COPY deploy/image/setup.sh"));
    let prebuilt = dockerfile.find("AS runtime-prebuilt").unwrap();
    assert!(
        prebuilt < dockerfile.find("AS build").unwrap(),
        "the classic builder must not need the rust image for runtime-prebuilt"
    );
}

#[test]
fn the_cluster_profile_runs_every_service_on_six_nodes_with_two_shards() {
    let config = compose_config(&["compose.yaml", "deploy/compose/cluster.yaml"]).join("\n");
    for node in [
        "redis",
        "redis-2",
        "redis-3",
        "redis-4",
        "redis-5",
        "redis-6",
        "redis-cluster",
    ] {
        assert!(config.contains(&format!("\n  {node}:\n")), "{node} missing:\n{config}");
    }
    assert_eq!(config.matches("- --cluster-enabled").count(), 6, "{config}");
    // The replicas sync with the password the ACL file expects (checked with the secrets).
    assert_eq!(
        config.matches("- quantum-replication-dev-password").count(),
        6,
        "{config}"
    );
    for setting in [
        "REDIS_URL: redis-cluster://redis:6379?node=redis-2:6379",
        "STREAM_SHARDS: '2'",
        "REDIS_WAIT_REPLICAS: '1'",
    ] {
        assert_eq!(
            config.matches(setting).count(),
            3,
            "{setting} for bridge, executor and ledger:\n{config}"
        );
    }
    assert_eq!(
        config.matches("condition: service_completed_successfully").count(),
        4,
        "{config}"
    );
}

#[test]
fn compose_stack_validates_and_matches_the_acls() {
    let out = Command::new("docker-compose")
        .args(["-f", "compose.yaml", "config"])
        .current_dir(repo())
        .output()
        .expect("docker-compose (Debian package docker-compose) must be installed");
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for service in [
        "redis",
        "bridge",
        "executor",
        "ledger",
        "sim",
        "prometheus",
        "grafana",
        "jaeger",
    ] {
        assert!(
            config.contains(&format!("\n  {service}:\n")),
            "service {service} missing:\n{config}"
        );
    }
    for port in ["9101", "9102", "9103"] {
        assert!(
            config.contains(&format!("http://127.0.0.1:{port}/readyz")),
            "no /readyz healthcheck on {port}"
        );
    }
    assert!(
        config.contains("--appendonly") && config.contains("--aclfile"),
        "redis must run with AOF and the ACL file"
    );
    assert!(config.contains("deploy/grafana/provisioning") && config.contains("deploy/prometheus"));
    assert_eq!(
        config
            .matches("OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4318")
            .count(),
        3,
        "the three services export their traces to jaeger"
    );

    // Every development secret is the password the ACL file expects for its user.
    use sha2::{Digest, Sha256};
    let acl = std::fs::read_to_string(repo().join("deploy/redis/users.acl")).unwrap();
    for user in ["bridge", "executor", "ledger", "ops", "kernel", "admin", "replication"] {
        let secret =
            std::fs::read_to_string(repo().join(format!("deploy/compose/secrets/{user}-redis-password"))).unwrap();
        let hash: String = Sha256::digest(secret.trim_end().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let line = acl
            .lines()
            .find(|l| l.starts_with(&format!("user quantum-{user} ")))
            .unwrap();
        assert!(
            line.contains(&format!("#{hash}")),
            "secret of quantum-{user} does not match users.acl"
        );
    }

    // The image ships exactly the binaries the workspace builds.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for binary in [
        "quantum-intent-bridge",
        "quantum-intent-executor",
        "quantum-ledger",
        "quantumctl",
    ] {
        assert!(
            dockerfile.contains(&format!("/src/target/release/{binary}")),
            "Dockerfile misses {binary}"
        );
        assert!(bin_dir().join(binary).exists());
    }
}
