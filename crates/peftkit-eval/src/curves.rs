//! Training curves as a self-contained SVG: train and eval loss on the left panel, eval accuracy
//! on the right, both against the optimizer step.

/// One point of a curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Optimizer step.
    pub step: f64,
    /// Value.
    pub value: f64,
}

const W: f64 = 950.0;
const H: f64 = 360.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 250.0;
const TOP: f64 = 50.0;

struct Panel {
    x0: f64,
    title: &'static str,
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        self.x0
            + PANEL_W
                * if self.x_max > 0.0 {
                    x / self.x_max
                } else {
                    0.0
                }
    }
    fn py(&self, y: f64) -> f64 {
        let span = (self.y_max - self.y_min).max(1e-12);
        TOP + PANEL_H * (1.0 - (y - self.y_min) / span)
    }

    fn frame(&self, out: &mut String) {
        out.push_str(&format!(
            r##"<text x="{:.1}" y="{:.1}" font-size="15" text-anchor="middle" font-weight="bold">{}</text>
<rect x="{:.1}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>
"##,
            self.x0 + PANEL_W / 2.0,
            TOP - 14.0,
            self.title,
            self.x0
        ));
        for i in 0..=4 {
            let y = self.y_min + (self.y_max - self.y_min) * i as f64 / 4.0;
            let py = self.py(y);
            out.push_str(&format!(
                r##"<line x1="{:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.3}</text>
"##,
                self.x0,
                self.x0 + PANEL_W,
                self.x0 - 4.0,
                py + 4.0,
                y
            ));
            let x = self.x_max * i as f64 / 4.0;
            out.push_str(&format!(
                r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0}</text>
"##,
                self.px(x),
                TOP + PANEL_H + 16.0,
                x
            ));
        }
        out.push_str(&format!(
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">step</text>
"##,
            self.x0 + PANEL_W / 2.0,
            TOP + PANEL_H + 34.0
        ));
    }

    fn series(&self, out: &mut String, points: &[CurvePoint], color: &str, markers: bool) {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", self.px(p.step), self.py(p.value)))
            .collect();
        out.push_str(&format!(
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"/>
"#,
            path.join(" ")
        ));
        if markers || points.len() == 1 {
            for p in points {
                out.push_str(&format!(
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>
"#,
                    self.px(p.step),
                    self.py(p.value)
                ));
            }
        }
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    ((lo - pad).max(0.0), hi + pad)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG document with the training loss, the eval loss and the eval accuracy against the step.
pub fn curves_svg(
    title: &str,
    train_loss: &[CurvePoint],
    eval_loss: &[CurvePoint],
    eval_accuracy: &[CurvePoint],
) -> String {
    let x_max = train_loss
        .iter()
        .chain(eval_loss)
        .chain(eval_accuracy)
        .map(|p| p.step)
        .fold(1.0f64, f64::max);
    let (lo, hi) = range(train_loss.iter().chain(eval_loss).map(|p| p.value));
    let (alo, ahi) = range(eval_accuracy.iter().map(|p| p.value));
    let loss = Panel {
        x0: 70.0,
        title: "loss",
        x_max,
        y_min: lo,
        y_max: hi,
    };
    let acc = Panel {
        x0: 70.0 + PANEL_W + 70.0,
        title: "eval accuracy",
        x_max,
        y_min: alo,
        y_max: ahi.min(1.0).max(alo + 1e-3),
    };
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="18" font-size="14" text-anchor="middle">{}</text>
"##,
        W / 2.0,
        escape(title)
    );
    loss.frame(&mut out);
    acc.frame(&mut out);
    loss.series(&mut out, train_loss, "#1f77b4", false);
    loss.series(&mut out, eval_loss, "#d62728", true);
    acc.series(&mut out, eval_accuracy, "#2ca02c", true);
    let ly = TOP + PANEL_H + 52.0;
    for (i, (name, color)) in [
        ("train loss", "#1f77b4"),
        ("eval loss", "#d62728"),
        ("eval accuracy", "#2ca02c"),
    ]
    .iter()
    .enumerate()
    {
        let x = 120.0 + 200.0 * i as f64;
        out.push_str(&format!(
            r#"<line x1="{x}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{name}</text>
"#,
            x + 24.0,
            x + 30.0,
            ly + 4.0
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series() {
        let pts = |v: &[(f64, f64)]| {
            v.iter()
                .map(|&(step, value)| CurvePoint { step, value })
                .collect::<Vec<_>>()
        };
        let svg = curves_svg(
            "a <b> run",
            &pts(&[(1.0, 0.7), (2.0, 0.5), (3.0, 0.4)]),
            &pts(&[(3.0, 0.45)]),
            &pts(&[(3.0, 0.8)]),
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a &lt;b&gt; run"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("eval accuracy"));
    }
}
