//! The corpus of invalid configurations (tests/invalid-configs.json), each
//! refused by the filter inside a real Envoy and by the check CLI, with the
//! same exact messages.

use std::process::Command;

use integration::{cli_bin, repo_root, validate, Bootstrap};

fn corpus() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo_root().join("tests/invalid-configs.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let errors = c["errors"].as_array().unwrap();
            (
                c["config"].as_str().unwrap().to_string(),
                errors
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// The messages of the filter's "invalid configuration: ..." log lines, in
/// order, once each (every VM that tries the config logs them).
fn filter_messages(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        if let Some((_, msg)) = line.split_once("invalid configuration: ") {
            if !out.iter().any(|m| m == msg) {
                out.push(msg.to_string());
            }
        }
    }
    out
}

fn cli_messages(json: &str) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(&file, json).unwrap();
    let out = Command::new(cli_bin())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} (make integration builds it): {e}",
                cli_bin()
            )
        });
    let lines = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix("invalid configuration: ")
                .unwrap_or(l)
                .to_string()
        })
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

/// (config, expected messages, Envoy accepted it, Envoy's messages, CLI exit
/// code and messages)
type Outcome = (String, Vec<String>, bool, Vec<String>, (i32, Vec<String>));

#[test]
fn every_invalid_config_is_refused_by_envoy_and_the_cli_with_the_same_message() {
    let cases = corpus();
    assert!(cases.len() >= 30);
    // Two at a time (2-core machines); each `envoy --mode validate` loads the
    // filter and runs its on_configure.
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let chunks: Vec<_> = cases.chunks(cases.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(json, want)| {
                            let dir = tempfile::tempdir().unwrap();
                            let path = dir.path().join("envoy.yaml");
                            let b = Bootstrap::shipped().for_test().with_plugin_config(json);
                            std::fs::write(&path, b.to_yaml()).unwrap();
                            let (ok, log) = validate(&path);
                            (
                                json.clone(),
                                want.clone(),
                                ok,
                                filter_messages(&log),
                                cli_messages(json),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (json, want, envoy_ok, from_envoy, (cli_code, from_cli)) in results {
        assert!(!envoy_ok, "Envoy accepted: {json}");
        assert_eq!(from_envoy, want, "Envoy's log for: {json}");
        assert_eq!(cli_code, 1, "CLI exit code for: {json}");
        assert_eq!(from_cli, want, "CLI output for: {json}");
    }
}
