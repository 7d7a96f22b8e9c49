//! Tables, targets, the summary line and the JSON form.

use serde_json::{Value, json};

/// What a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    None,
    /// spool / baseline must be at least this.
    RatioMin(f64),
    /// spool / baseline must be at most this.
    RatioMax(f64),
    /// spool's figure must be at most this.
    Max(f64),
    /// spool's figure must be at least this.
    Min(f64),
    /// spool's figure must be at most `ratio` × baseline + `plus`.
    Within {
        ratio: f64,
        plus: f64,
    },
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::None => String::new(),
            Target::RatioMin(x) => format!("ratio >= {x}"),
            Target::RatioMax(x) => format!("ratio <= {x}"),
            Target::Max(x) => format!("<= {x}"),
            Target::Min(x) => format!(">= {x}"),
            Target::Within { ratio, plus } => format!("<= {ratio}x base + {plus}"),
        }
    }
}

pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub spool: Option<f64>,
    pub base: Option<f64>,
    pub target: Target,
}

impl Row {
    pub fn new(metric: &str, unit: &'static str, spool: Option<f64>, base: Option<f64>) -> Row {
        Row {
            metric: metric.to_owned(),
            unit,
            spool,
            base,
            target: Target::None,
        }
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }

    fn ratio(&self) -> Option<f64> {
        match (self.spool, self.base) {
            (Some(s), Some(b)) if b != 0.0 => Some(s / b),
            _ => None,
        }
    }

    /// `Some(true)` met, `Some(false)` missed, `None` no target or no figure.
    fn met(&self) -> Option<bool> {
        match self.target {
            Target::None => None,
            Target::RatioMin(x) => self.ratio().map(|r| r >= x),
            Target::RatioMax(x) => self.ratio().map(|r| r <= x),
            Target::Max(x) => self.spool.map(|v| v <= x),
            Target::Min(x) => self.spool.map(|v| v >= x),
            Target::Within { ratio, plus } => self
                .spool
                .zip(self.base)
                .map(|(s, b)| s <= ratio * b + plus),
        }
    }

    fn status(&self) -> &'static str {
        match (self.met(), self.target) {
            (Some(true), _) => "met",
            (Some(false), _) => "MISSED",
            (None, Target::None) => "",
            (None, _) => "n/a",
        }
    }
}

/// The usual columns: spool against the baseline server.
pub const SPOOL_BASELINE: [&str; 2] = ["spool", "baseline"];

pub struct Section {
    pub name: &'static str,
    pub title: String,
    /// The headers of the two figure columns: what ran as "spool", what as "baseline".
    pub columns: [&'static str; 2],
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// A number with sensible precision.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 || (a >= 1.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.5}")
    }
}

fn cell(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "-".into())
}

impl Section {
    pub fn print(&self) {
        println!();
        println!("== {} — {}", self.name, self.title);
        let header = [
            "metric".to_owned(),
            self.columns[0].to_owned(),
            self.columns[1].to_owned(),
            "ratio".to_owned(),
            "target".to_owned(),
            String::new(),
        ];
        let mut table = vec![header];
        for row in &self.rows {
            let metric = if row.unit.is_empty() {
                row.metric.clone()
            } else {
                format!("{} ({})", row.metric, row.unit)
            };
            let ratio = row.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default();
            table.push([
                metric,
                cell(row.spool),
                cell(row.base),
                ratio,
                row.target.text(),
                row.status().to_owned(),
            ]);
        }
        let mut widths = [0usize; 6];
        for line in &table {
            for (w, c) in widths.iter_mut().zip(line) {
                *w = (*w).max(c.chars().count());
            }
        }
        for line in &table {
            let mut out = String::new();
            for (i, (c, w)) in line.iter().zip(widths).enumerate() {
                if i == 0 {
                    out.push_str(&format!("  {c:<w$}"));
                } else {
                    out.push_str(&format!("  {c:>w$}"));
                }
            }
            println!("{}", out.trim_end());
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
    }
}

pub fn summary(sections: &[Section]) {
    let mut met = 0;
    let mut total = 0;
    let mut missed = Vec::new();
    for s in sections {
        for r in &s.rows {
            match r.met() {
                Some(true) => {
                    met += 1;
                    total += 1;
                }
                Some(false) => {
                    total += 1;
                    missed.push(format!("{}: {}", s.name, r.metric));
                }
                None => {}
            }
        }
    }
    println!();
    if missed.is_empty() {
        println!("summary: {met}/{total} targets met");
    } else {
        println!(
            "summary: {met}/{total} targets met; MISSED: {}",
            missed.join(", ")
        );
    }
}

pub fn to_json(sections: &[Section]) -> Value {
    let mut out = serde_json::Map::new();
    for s in sections {
        let rows: Vec<Value> = s
            .rows
            .iter()
            .map(|r| {
                json!({
                    "metric": r.metric,
                    "unit": r.unit,
                    "spool": r.spool,
                    "baseline": r.base,
                    "ratio": r.ratio(),
                    "target": r.target.text(),
                    "met": r.met(),
                })
            })
            .collect();
        out.insert(
            s.name.to_owned(),
            json!({"title": s.title, "columns": s.columns, "rows": rows, "notes": s.notes}),
        );
    }
    Value::Object(out)
}
