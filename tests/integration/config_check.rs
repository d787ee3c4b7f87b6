//! `portico -t` and start-up with bad files: every error with its YAML path, exit 64.

use crate::harness::*;
use std::path::Path;

#[test]
fn every_file_in_conf_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, out, err) = run_cli(&["-t", "-c", path.to_str().unwrap()]);
            assert_eq!(
                (code, out.trim()),
                (0, "configuration ok"),
                "{}: {err}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "conf/ holds no YAML file");
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
        for want in &expected {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
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
    assert!(
        err.contains("cannot read /nonexistent/portico.yaml"),
        "{err}"
    );
}
