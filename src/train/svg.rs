//! The loss curve of a training run as a small standalone SVG.

use super::EpochStats;

/// An SVG line chart of the loss per epoch (and the accuracy, for classification).
pub fn loss_curve(title: &str, epochs: &[EpochStats], classification: bool) -> String {
    let (w, h, m) = (640.0, 360.0, 50.0);
    let n = epochs.len().max(1) as f64;
    let max_loss = epochs.iter().map(|e| e.loss).fold(f64::MIN_POSITIVE, f64::max);
    let x = |i: usize| m + (w - 2.0 * m) * if n > 1.0 { i as f64 / (n - 1.0) } else { 0.5 };
    let y = |v: f64, top: f64| h - m - (h - 2.0 * m) * (v / top).clamp(0.0, 1.0);
    let line = |values: Vec<f64>, top: f64| {
        values.iter().enumerate().map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v, top))).collect::<Vec<_>>().join(" ")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{m}\" y=\"24\" font-size=\"14\">{}</text>\n\
         <line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n\
         <text x=\"8\" y=\"{}\">{max_loss:.3}</text><text x=\"8\" y=\"{}\">0</text>\n",
        escape(title),
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0,
        h - 12.0,
        m + 4.0,
        h - m
    );
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"#c0392b\">loss</text>\n",
        line(epochs.iter().map(|e| e.loss).collect(), max_loss),
        w - m + 4.0,
        y(epochs.last().map_or(0.0, |e| e.loss), max_loss)
    );
    if classification {
        s += &format!(
            "<polyline fill=\"none\" stroke=\"#2471a3\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"#2471a3\">accuracy (0..1)</text>\n",
            line(epochs.iter().map(|e| e.accuracy).collect(), 1.0),
            w - m - 90.0,
            y(epochs.last().map_or(0.0, |e| e.accuracy), 1.0) - 6.0
        );
    }
    s + "</svg>\n"
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_an_svg_with_one_point_per_epoch() {
        let e = |epoch, loss| EpochStats { epoch, loss, accuracy: 0.5, seconds: 1.0, allreduce_seconds: 0.1 };
        let s = loss_curve("logistic <x>", &[e(1, 0.7), e(2, 0.5), e(3, 0.45)], true);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("logistic &lt;x&gt;"));
        let points = s.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(points.split(' ').count(), 3);
    }
}
