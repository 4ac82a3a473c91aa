//! Time stamps, statistics and the result tables with their Markdown report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Wall-clock nanoseconds since the epoch: comparable with the events' `at`, which the
/// worker (or the standalone process) stamps with the same machine clock.
pub fn now_ns() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    d.as_nanos() as i64
}

/// An event's `at` (RFC 3339) in nanoseconds since the epoch.
pub fn parse_at(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()?
        .timestamp_nanos_opt()
}

pub fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

/// Nearest-rank percentile of milliseconds.
pub fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn p50(values: &[f64]) -> f64 {
    pct(values, 50.0)
}

pub fn p99(values: &[f64]) -> f64 {
    pct(values, 99.0)
}

pub fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn met(ok: bool) -> String {
    if ok { "met" } else { "NOT met" }.into()
}

/// One result table: printed as text when it completes, and written as Markdown.
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn text(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from(" ");
            for (i, c) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let _ = write!(s, " {c:<w$} ");
            }
            s.trim_end().to_string()
        };
        let mut out = format!("\n== {} ==\n{}\n", self.title, line(&self.headers));
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n| {} |\n|", self.title, self.headers.join(" | "));
        for _ in &self.headers {
            out.push_str("---|");
        }
        out.push('\n');
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out.push('\n');
        out
    }
}

/// Collects tables; prints each as it completes and rewrites the Markdown file, so a
/// run cut short still leaves what it measured.
pub struct Report {
    pub tables: Vec<Table>,
    pub markdown: Option<PathBuf>,
}

impl Report {
    pub fn push(&mut self, table: Table) {
        print!("{}", table.text());
        self.tables.push(table);
        if let Some(path) = &self.markdown {
            let body: String = self.tables.iter().map(Table::markdown).collect();
            if let Err(e) = std::fs::write(path, body) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
    }
}
