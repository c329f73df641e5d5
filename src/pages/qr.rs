//! QR codes of `verification_uri_complete` (RFC 8628 §3.3.1 suggests devices show one), as
//! SVG for devices that can show an image but not draw a QR code, and as text for terminals.

use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

/// Medium error correction: still readable off a glossy TV screen.
fn code(text: &str) -> Option<QrCode> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).ok()
}

/// An SVG image (black on white, with the quiet zone), or `None` if `text` is too long for a QR
/// code.
pub fn svg(text: &str) -> Option<String> {
    Some(
        code(text)?
            .render::<svg::Color<'_>>()
            .min_dimensions(240, 240)
            .dark_color(svg::Color("#000000"))
            .light_color(svg::Color("#ffffff"))
            .build(),
    )
}

/// The QR code as lines of Unicode half blocks, two modules per character cell, for a
/// terminal.
pub fn terminal(text: &str) -> Option<String> {
    Some(
        code(text)?
            .render::<unicode::Dense1x2>()
            .dark_color(unicode::Dense1x2::Light)
            .light_color(unicode::Dense1x2::Dark)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_svg_and_text() {
        let url = "https://id.example.com/device?user_code=BCDF-GHJK";
        let image = svg(url).unwrap();
        assert!(image.starts_with("<?xml") && image.contains("<svg") && image.ends_with("</svg>"));
        assert!(terminal(url).unwrap().lines().count() > 10);
        assert!(svg(&"x".repeat(5000)).is_none());
    }
}
