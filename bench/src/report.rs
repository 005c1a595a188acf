//! Figures, the readable report and the machine-readable `RESULT` lines.

use std::fmt::Write as _;

/// Whether a smaller or a bigger figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// What Linkbook's figure is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Against {
    /// The JavaScript automerge-repo sync server (`None`: not run or failed).
    Peer(Option<f64>),
    /// The best any implementation could do here.
    Limit(f64),
    /// The same operation on plain SQLite.
    Baseline(f64),
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub workload: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    pub linkbook: f64,
    pub against: Against,
    pub better: Better,
}

impl Figure {
    /// Bigger is better: other / linkbook for costs, linkbook / other for rates.
    pub fn ratio(&self) -> Option<f64> {
        let other = match self.against {
            Against::Peer(p) => p?,
            Against::Limit(v) | Against::Baseline(v) => v,
        };
        let r = match self.better {
            Better::Lower => other / self.linkbook,
            Better::Higher => self.linkbook / other,
        };
        r.is_finite().then_some(r)
    }
}

/// Everything one run measured, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// Free text per workload (sizes, notes), printed before its table.
    pub notes: Vec<(&'static str, String)>,
}

/// A number with sensible precision for a table.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.5}")
    }
}

impl Report {
    pub fn add(
        &mut self,
        workload: &'static str,
        name: &'static str,
        unit: &'static str,
        linkbook: f64,
        against: Against,
        better: Better,
    ) {
        self.figures.push(Figure {
            workload,
            name,
            unit,
            linkbook,
            against,
            better,
        });
    }

    pub fn note(&mut self, workload: &'static str, text: impl Into<String>) {
        self.notes.push((workload, text.into()));
    }

    /// The tables, one per workload.
    pub fn readable(&self) -> String {
        let mut out = String::new();
        let mut workloads: Vec<&'static str> = Vec::new();
        for w in self
            .figures
            .iter()
            .map(|f| f.workload)
            .chain(self.notes.iter().map(|n| n.0))
        {
            if !workloads.contains(&w) {
                workloads.push(w);
            }
        }
        for w in workloads {
            let _ = writeln!(out, "\n== {w}");
            for (_, n) in self.notes.iter().filter(|n| n.0 == w) {
                let _ = writeln!(out, "   {n}");
            }
            let rows: Vec<&Figure> = self.figures.iter().filter(|f| f.workload == w).collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "   {:<28} {:>12} {:>12} {:>22} {:>8}",
                "figure", "unit", "Linkbook", "compared with", "ratio"
            );
            for f in rows {
                let other = match f.against {
                    Against::Peer(Some(v)) => format!("JS peer {}", num(v)),
                    Against::Peer(None) => "JS peer -".into(),
                    Against::Limit(v) => format!("limit {}", num(v)),
                    Against::Baseline(v) => format!("SQLite {}", num(v)),
                };
                let ratio = f.ratio().map(|r| format!("{r:.2}")).unwrap_or("-".into());
                let _ = writeln!(
                    out,
                    "   {:<28} {:>12} {:>12} {:>22} {:>8}",
                    f.name,
                    f.unit,
                    num(f.linkbook),
                    other,
                    ratio
                );
            }
        }
        out
    }

    /// One `RESULT` line per figure.
    pub fn result_lines(&self) -> String {
        let mut out = String::new();
        for f in &self.figures {
            let against = match f.against {
                Against::Peer(Some(v)) => format!("peer={}", num(v)),
                Against::Peer(None) => "peer=-".into(),
                Against::Limit(v) => format!("peer=- limit={}", num(v)),
                Against::Baseline(v) => format!("peer=- baseline={}", num(v)),
            };
            let ratio = f.ratio().map(|r| format!("{r:.2}")).unwrap_or("-".into());
            let _ = writeln!(
                out,
                "RESULT workload={} figure={} linkbook={} {} ratio={}",
                f.workload,
                f.name,
                num(f.linkbook),
                against,
                ratio
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_bigger_is_better() {
        let mut r = Report::default();
        r.add(
            "w",
            "cpu",
            "s",
            2.0,
            Against::Peer(Some(10.0)),
            Better::Lower,
        );
        r.add(
            "w",
            "rate",
            "/s",
            50.0,
            Against::Limit(100.0),
            Better::Higher,
        );
        r.add("w", "gone", "s", 1.0, Against::Peer(None), Better::Lower);
        let lines = r.result_lines();
        assert!(
            lines.contains("figure=cpu linkbook=2.000 peer=10.00 ratio=5.00"),
            "{lines}"
        );
        assert!(
            lines.contains("figure=rate linkbook=50.00 peer=- limit=100.0 ratio=0.50"),
            "{lines}"
        );
        assert!(
            lines.contains("figure=gone linkbook=1.000 peer=- ratio=-"),
            "{lines}"
        );
    }
}
