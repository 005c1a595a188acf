//! Server-rendered SVG: QR codes (enrolment, the TOTP seed) and the family
//! day's arrivals chart. Plain presentation attributes only: the console's
//! Content-Security-Policy allows no inline style.

use maud::{Markup, PreEscaped, html};

use super::{ConsoleError, ConsoleResult};

/// `text` as a QR code, an inline `<svg>` labelled for screen readers.
pub fn qr(text: &str) -> ConsoleResult<Markup> {
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| ConsoleError::Internal(format!("QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    // The renderer writes an XML declaration, which has no place inside HTML.
    let start = svg.find("<svg").unwrap_or(0);
    let svg = svg[start..].replacen(
        "<svg",
        "<svg role=\"img\" aria-label=\"QR code\" focusable=\"false\"",
        1,
    );
    Ok(html! { (PreEscaped(svg)) })
}

/// A bar chart of `bars` (label, count): counts as bars, labels below,
/// values above; `title` names it for screen readers. The page also shows
/// the numbers as a table.
pub fn bar_chart(title: &str, bars: &[(String, u64)]) -> Markup {
    const BAR: u64 = 36;
    const GAP: u64 = 8;
    const HEIGHT: u64 = 160;
    let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let width = (bars.len() as u64 * (BAR + GAP)).max(BAR) + GAP;
    let total = HEIGHT + 48;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="chart-title"
            width=(width) height=(total) viewBox={ "0 0 " (width) " " (total) } {
            title #chart-title { (title) }
            @for (i, (label, n)) in bars.iter().enumerate() {
                @let x = GAP + i as u64 * (BAR + GAP);
                @let h = n * HEIGHT / max;
                rect.bar x=(x) y=(HEIGHT + 16 - h) width=(BAR) height=(h) {}
                text.value x=(x + BAR / 2) y=(HEIGHT + 12 - h) text-anchor="middle" { (n) }
                text.label x=(x + BAR / 2) y=(HEIGHT + 34) text-anchor="middle" { (label) }
            }
            line.axis x1="0" y1=(HEIGHT + 16) x2=(width) y2=(HEIGHT + 16) {}
        }
    }
}
