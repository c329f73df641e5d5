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
        assert!(svg(&"x".repeat(5000)).is_none());
    }

    /// Decodes a QR code drawn as a bitmap of `width` × `height` (`dark(x, y)`).
    fn decode(width: usize, height: usize, dark: impl Fn(usize, usize) -> bool) -> String {
        let mut img = rqrr::PreparedImage::prepare_from_bitmap(width, height, dark);
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1);
        grids[0].decode().unwrap().1
    }

    /// The SVG scans back to the URL: its one path is a list of dark rectangles
    /// `M{left} {top}h{width}v{height}H{left}V{top}`.
    #[test]
    fn svg_decodes_to_the_url() {
        let url = "https://id.example.com/device?user_code=BCDF-GHJK";
        let image = svg(url).unwrap();
        let attr = |name: &str| -> usize {
            let at = image.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            image[at..].split('"').next().unwrap().parse().unwrap()
        };
        let (w, h) = (attr("width"), attr("height"));
        let d = image
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut dark = vec![false; w * h];
        for rect in d.split('M').filter(|r| !r.is_empty()) {
            let nums: Vec<usize> = rect
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .map(|n| n.parse().unwrap())
                .collect();
            let (left, top, rw, rh) = (nums[0], nums[1], nums[2], nums[3]);
            for y in top..top + rh {
                for x in left..left + rw {
                    dark[y * w + x] = true;
                }
            }
        }
        assert_eq!(decode(w, h, |x, y| dark[y * w + x]), url);
    }

    /// The terminal drawing scans back to the URL: each character is two modules, a drawn half
    /// being light (the colours are swapped for dark terminals).
    #[test]
    fn terminal_code_decodes_to_the_url() {
        let url = "http://localhost:8080/device?user_code=BCDF-GHJK";
        let text = terminal(url).unwrap();
        let rows: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        let width = rows[0].len();
        let light = |c: char, top: bool| match c {
            '█' => true,
            '▀' => top,
            '▄' => !top,
            _ => false,
        };
        let content = decode(width, rows.len() * 2, |x, y| {
            !light(rows[y / 2][x], y % 2 == 0)
        });
        assert_eq!(content, url);
    }
}
