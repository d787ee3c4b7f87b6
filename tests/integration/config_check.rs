//! `portico -t` and start-up with bad files: every error with its YAML path, exit 64.

use crate::harness::*;
use std::path::Path;

/// Every shipped config passes `-t`: conf/ and conf/examples/ (Kubernetes Service names, which
/// resolve only in a cluster, swapped for 127.0.0.1 as `make check-config` does).
#[test]
fn every_file_in_conf_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for sub in ["conf", "conf/examples"] {
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let local = in_cluster_names_to_loopback(&text);
            let copy = dir.path().join(path.file_name().unwrap());
            std::fs::write(&copy, local).unwrap();
            let (code, out, err) = run_cli(&["-t", "-c", copy.to_str().unwrap()]);
            assert_eq!(
                (code, out.trim()),
                (0, "configuration ok"),
                "{}: {err}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "conf/ and conf/examples/ hold {checked} YAML files"
    );
}

/// `chat.default.svc.cluster.local:3000` -> `127.0.0.1:3000`, as `make check-config`'s sed.
fn in_cluster_names_to_loopback(text: &str) -> String {
    const SUFFIX: &str = ".svc.cluster.local";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(SUFFIX) {
        let name = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .map_or(0, |i| i + 1);
        out.push_str(&rest[..name]);
        out.push_str("127.0.0.1");
        rest = &rest[at + SUFFIX.len()..];
    }
    out.push_str(rest);
    out
}

/// Each fixture lists the lines `-t` must print in `# expect:` comments.
#[test]
fn bad_fixtures_report_every_error_with_its_path() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no # expect: line",
            path.display()
        );
        let (code, out, err) = run_cli(&["-t", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{}: exit code; stderr:\n{err}", path.display());
        assert!(!out.contains("configuration ok"), "{}", path.display());
        let lines: Vec<&str> = err.lines().collect();
        // An error about a key in the file names its line first: `line 7: routes[1]...`.
        let without_line = |l: &str| -> String {
            match l.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
                Some((n, rest)) if n.parse::<usize>().is_ok() => rest.to_owned(),
                _ => l.to_owned(),
            }
        };
        for want in &expected {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(want) || without_line(l).starts_with(want)),
                "{}: no line starting {want:?} in:\n{err}",
                path.display()
            );
        }
        if expected.len() > 1 {
            // Nothing beyond the expected errors (plus the header line).
            assert_eq!(
                lines.len(),
                expected.len() + 1,
                "{}:\n{err}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn starting_with_a_bad_file_exits_64_without_listening() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad/unknown_upstream.yaml");
    let (code, _, err) = run_cli(&["-c", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("routes[1].upstream: unknown upstream \"api\""),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (code, _, err) = run_cli(&["-t", "-c", "/nonexistent/portico.yaml"]);
    assert_eq!(code, 64);
    assert_eq!(
        err.trim(),
        "portico: cannot read /nonexistent/portico.yaml: No such file or directory"
    );
}

/// The keys each section of the file accepts, read from the schema itself: deserializing a map
/// with an unknown key makes serde list the section's fields.
fn fields<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let err = match serde_yaml::from_str::<T>("__probe__: 1") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the probe key was accepted"),
    };
    let list = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no field list in {err:?}"));
    list.split(',')
        .map(|f| f.trim().trim_matches('`').to_owned())
        .filter(|f| !f.is_empty())
        .map(|f| f.split('`').next().unwrap().to_owned())
        .collect()
}

/// docs/configuration.md names every key the schema accepts, by its YAML path: a key added to
/// the schema without documentation fails here.
#[test]
fn every_key_is_documented() {
    use portico::config::schema::*;
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let sections: Vec<(&str, Vec<String>)> = vec![
        ("", fields::<FileConfig>()),
        ("server.", fields::<ServerSection>()),
        ("listeners[].", fields::<ListenerSection>()),
        ("listeners[].tls.", fields::<ListenerTls>()),
        (
            "listeners[].tls.certificates[].",
            fields::<CertificatePair>(),
        ),
        ("admin.", fields::<AdminSection>()),
        ("access_log.", fields::<AccessLogSection>()),
        ("upstreams.*.", fields::<UpstreamSection>()),
        ("upstreams.*.health_check.", fields::<HealthCheckSection>()),
        ("upstreams.*.tls.", fields::<UpstreamTls>()),
        ("upstreams.*.sticky.", fields::<StickySection>()),
        ("upstreams.*.resolve.", fields::<ResolveSection>()),
        ("routes[].", fields::<RouteSection>()),
        ("routes[].websocket.", fields::<WebSocketSection>()),
        ("routes[].request_headers.", fields::<HeaderRulesSection>()),
        ("routes[].response_headers.", fields::<HeaderRulesSection>()),
        ("routes[].rate_limit.", fields::<RateLimitSection>()),
        ("routes[].auth.", fields::<AuthSection>()),
    ];
    let mut missing = Vec::new();
    let mut count = 0;
    for (prefix, keys) in &sections {
        assert!(!keys.is_empty(), "no keys read for {prefix:?}");
        for key in keys {
            count += 1;
            let path = format!("{prefix}{key}");
            // Top-level sections are documented as headings; every other key in a table row.
            let documented = if prefix.is_empty() {
                doc.contains(&format!("## {key}")) || doc.contains(&format!("`{path}`"))
            } else {
                doc.contains(&format!("| `{path}` |"))
            };
            if !documented {
                missing.push(path);
            }
        }
    }
    // The long form of a peer is parsed by hand (a string or a map): its keys are listed here.
    for path in ["upstreams.*.peers[].address", "upstreams.*.peers[].weight"] {
        if !doc.contains(&format!("| `{path}` |")) {
            missing.push(path.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
    assert!(count > 60, "only {count} keys read from the schema");
}

/// A second `make run` on a busy port panicked with a backtrace; now it says which listener
/// and why, and exits 1.
#[test]
fn a_busy_port_fails_plainly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("p.yaml");
    std::fs::write(
        &conf,
        format!(
            "server: {{pid_file: '{d}/p.pid', upgrade_sock: '{d}/u.sock'}}\nlisteners: [{{address: '{addr}'}}]\nupstreams: {{app: {{peers: ['127.0.0.1:9']}}}}\nroutes: [{{upstream: app}}]\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["-c", conf.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("portico: listener {addr}: Address already in use")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `--help` says what the signals do, where the logs are set and what the exit codes mean.
#[test]
fn help_names_signals_exit_codes_and_docs() {
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "SIGHUP",
        "SIGQUIT",
        "SIGTERM",
        "RUST_LOG",
        "64",
        "docs/configuration.md",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
}
