//! `/metrics` of the real operator process checked by the real promtool, and kept equal to the
//! scrape fixture the dashboard and alert-rule tests read (tests/observability/testdata/metrics.txt).
//!
//! promtool is `.testbed/promtool` (scripts/promtool, run by scripts/bootstrap): without it this
//! fails. [`check_scrape`] runs on the chart's operator process in tests/e2e/image.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use testbed::stack::repo_root;

/// Where the fixture lives.
pub fn fixture() -> PathBuf {
    repo_root().join("tests/observability/testdata/metrics.txt")
}

/// The real promtool; a missing one fails the test.
pub fn promtool() -> PathBuf {
    let p = repo_root().join(".testbed/promtool");
    assert!(p.is_file(), "no promtool at {} (scripts/promtool builds it; scripts/bootstrap runs that)", p.display());
    p
}

/// Metric families of a classic text exposition: name → (type, label names seen on its samples).
pub fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_string()).or_default().0 = kind.to_string();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let labels = label_names(&line[name_end..]);
            out.entry(name.to_string()).or_default().1.extend(labels);
        }
    }
    out
}

/// The label names of `{a="x",b="y\"z"} 1`.
fn label_names(rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let Some(body) = rest.strip_prefix('{') else { return names };
    let mut chars = body.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            '=' => {
                names.push(std::mem::take(&mut name).trim_start_matches(',').to_string());
                // The quoted value, with its escapes.
                let _open = chars.next();
                while let Some(v) = chars.next() {
                    match v {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            _ => name.push(c),
        }
    }
    names
}

async fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(url).timeout(Duration::from_secs(5));
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let ct = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (ct, resp.text().await.unwrap())
}

/// Scrapes `url` as curl would (classic text) and as Prometheus does (OpenMetrics), runs
/// `promtool check metrics` on the classic scrape (it must find nothing), and checks that its
/// families, their types and label names are the fixture's.
pub async fn check_scrape(url: &str) {
    let (ct, classic) = scrape(url, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "{classic}");
    // What Prometheus 3 sends by default.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
        application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
        text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (ct, om) = scrape(url, Some(prometheus_accept)).await;
    assert!(ct.starts_with("application/openmetrics-text; version=1.0.0"), "{ct}");
    assert!(om.ends_with("# EOF\n"), "{om}");

    let promtool = promtool();
    let version = std::process::Command::new(&promtool).arg("--version").output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or("promtool ?"));
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(classic.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{classic}",
        out.status
    );
    let fresh = families(&classic);
    eprintln!(
        "promtool check metrics: clean on {} families, {} samples",
        fresh.len(),
        classic.lines().filter(|l| !l.starts_with('#')).count()
    );

    let path = fixture();
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    let kept_families = families(&kept);
    if fresh != kept_families {
        let new = path.with_extension("txt.new");
        std::fs::create_dir_all(new.parent().unwrap()).unwrap();
        std::fs::write(&new, &classic).unwrap();
        panic!(
            "the operator's metric families differ from {} (the dashboard and rule tests read it); \
             this run's scrape is in {} (review, then move it over the fixture)\nfixture: {kept_families:#?}\nscrape: {fresh:#?}",
            path.display(),
            new.display()
        );
    }
}

#[test]
fn families_are_read_with_their_types_and_label_names() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",why=\"a \\\"q\\\", b=c\"} 2\na_total{y=\"\"} 0\n\
                # TYPE g gauge\ng 1\n";
    let f = families(text);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f["a_total"].0, "counter");
    assert_eq!(f["a_total"].1, ["x", "why", "y"].iter().map(|s| s.to_string()).collect());
    assert_eq!(f["g"], ("gauge".to_string(), BTreeSet::new()));
}
