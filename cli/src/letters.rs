//! Enrollment letters: one printable A4 PDF per new colleague, with the one-time code as
//! text and as a QR code, for the many staff who have no e-mail address.
//!
//! The QR code is embedded as an image at one pixel per module (with the quiet zone) and
//! scaled up on the page without interpolation, so it prints sharp at any resolution and
//! the file stays a few kilobytes. Text uses the PDF base font Helvetica with
//! WinAnsiEncoding, which covers German umlauts and ß without embedding a font.
//! Letters carry a secret, so the files are written readable by their owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use qrcode::{Color, QrCode};

/// What one letter says.
#[derive(Debug, Clone)]
pub(crate) struct Letter<'a> {
    /// Organisation name.
    pub(crate) org: &'a str,
    /// Personnel number.
    pub(crate) user: &'a str,
    /// Display name.
    pub(crate) name: &'a str,
    /// Department slugs.
    pub(crate) departments: Vec<&'a str>,
    /// The one-time enrollment code.
    pub(crate) code: &'a str,
    /// When it expires, RFC 3339.
    pub(crate) expires: String,
    /// Server address.
    pub(crate) server: &'a str,
    /// `--fingerprint SHA256:…` or a note on the CA, for the `enroll` command.
    pub(crate) trust: String,
}

/// Quiet zone around the QR code, in modules (the standard asks for 4).
const QUIET: usize = 4;

/// Writes `DIR/<personnel number>.pdf`; returns its path.
pub(crate) fn write(dir: &Path, letter: &Letter<'_>) -> Result<PathBuf> {
    let path = dir.join(format!("{}.pdf", letter.user));
    let bytes = render(letter)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(&bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Creates the letters directory, readable by its owner only.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

/// The PDF bytes of one letter.
pub(crate) fn render(letter: &Letter<'_>) -> Result<Vec<u8>> {
    let qr = QrCode::new(letter.code.as_bytes()).context("cannot make the QR code")?;
    let modules = qr.width();
    let side = modules + 2 * QUIET;
    let colors = qr.to_colors();
    let mut samples = vec![255u8; side * side];
    for y in 0..modules {
        for x in 0..modules {
            if colors[y * modules + x] == Color::Dark {
                samples[(y + QUIET) * side + x + QUIET] = 0;
            }
        }
    }

    let catalog = Ref::new(1);
    let pages = Ref::new(2);
    let page = Ref::new(3);
    let font = Ref::new(4);
    let bold = Ref::new(5);
    let image = Ref::new(6);
    let content_id = Ref::new(7);
    let (font_name, bold_name, image_name) = (Name(b"F1"), Name(b"F2"), Name(b"Qr"));

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(pages);
    pdf.pages(pages).kids([page]).count(1);
    let mut p = pdf.page(page);
    p.parent(pages)
        .media_box(Rect::new(0.0, 0.0, 595.0, 842.0))
        .contents(content_id);
    let mut resources = p.resources();
    resources
        .fonts()
        .pair(font_name, font)
        .pair(bold_name, bold);
    resources.x_objects().pair(image_name, image);
    resources.finish();
    p.finish();
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let side_i32 = i32::try_from(side).context("QR code too large")?;
    let mut img = pdf.image_xobject(image, &samples);
    img.width(side_i32)
        .height(side_i32)
        .bits_per_component(8)
        .interpolate(false);
    img.color_space().device_gray();
    img.finish();

    let mut c = Content::new();
    // The QR code, 160 pt square, top right.
    let size = 160.0;
    c.save_state();
    c.transform([
        size,
        0.0,
        0.0,
        size,
        595.0 - 56.0 - size,
        842.0 - 56.0 - size,
    ]);
    c.x_object(image_name);
    c.restore_state();

    let departments = if letter.departments.is_empty() {
        "–".to_owned()
    } else {
        letter.departments.join(", ")
    };
    let lines: Vec<(Name<'_>, f32, String)> = vec![
        (bold_name, 16.0, format!("Rathaus – {}", letter.org)),
        (font_name, 11.0, String::new()),
        (font_name, 11.0, format!("Persönlich: {}", letter.name)),
        (font_name, 11.0, format!("Personalnummer: {}", letter.user)),
        (font_name, 11.0, format!("Abteilungen: {departments}")),
        (font_name, 11.0, String::new()),
        (font_name, 11.0, String::new()),
        (font_name, 11.0, String::new()),
        (
            bold_name,
            13.0,
            "Ihr Zugang zum Dienst-Messenger".to_owned(),
        ),
        (font_name, 11.0, String::new()),
        (
            font_name,
            11.0,
            "Ihr einmaliger Anmeldecode / one-time enrollment code:".to_owned(),
        ),
        (bold_name, 20.0, letter.code.to_owned()),
        (
            font_name,
            11.0,
            format!("Gültig bis / valid until: {}", letter.expires),
        ),
        (font_name, 11.0, String::new()),
        (
            font_name,
            11.0,
            "So melden Sie sich an: Scannen Sie den QR-Code mit der Rathaus-App,".to_owned(),
        ),
        (font_name, 11.0, "oder geben Sie am Rechner ein:".to_owned()),
        (
            font_name,
            9.0,
            format!(
                "rathaus enroll --server {} --user {}",
                letter.server, letter.user
            ),
        ),
        (font_name, 9.0, format!("    {}", letter.trust)),
        (font_name, 9.0, format!("    --code {}", letter.code)),
        (font_name, 11.0, String::new()),
        (
            font_name,
            11.0,
            "Der Code gilt nur einmal. Geben Sie ihn niemandem weiter – auch nicht der IT."
                .to_owned(),
        ),
        (
            font_name,
            11.0,
            "Vernichten Sie diesen Brief, sobald Sie sich angemeldet haben.".to_owned(),
        ),
    ];
    c.begin_text();
    c.next_line(56.0, 842.0 - 72.0);
    let mut previous: Option<f32> = None;
    for (f, pt, text) in &lines {
        if let Some(prev) = previous {
            // Room for the larger of the two lines, so the code in large type breathes.
            c.next_line(0.0, -(pt.max(prev) * 1.4));
        }
        previous = Some(*pt);
        c.set_font(*f, *pt);
        c.show(Str(&win_ansi(text)));
    }
    c.end_text();
    pdf.stream(content_id, &c.finish());
    Ok(pdf.finish())
}

/// Text in the base fonts' WinAnsiEncoding; what it cannot show becomes `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            '\u{20}'..='\u{7e}' => c as u8,
            '\u{a0}'..='\u{ff}' => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            '€' => 0x80,
            '„' => 0x84,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '–' => 0x96,
            '—' => 0x97,
            _ => b'?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umlauts_survive_and_the_rest_is_marked() {
        assert_eq!(win_ansi("Jörg – ß €"), b"J\xf6rg \x96 \xdf \x80");
        assert_eq!(win_ansi("Łukasz"), b"?ukasz");
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;

    #[test]
    fn a_letter_is_a_small_pdf() {
        let letter = Letter {
            org: "Stadt Teststadt",
            user: "P1001",
            name: "Jörg Müller-Lüdenscheidt",
            departments: vec!["bauamt", "kaemmerei"],
            code: "K7QF-2M9X-HR4T-8WZP",
            expires: "2026-12-04T10:00:00Z".into(),
            server: "rathaus.stadt.example:4433",
            trust: format!("--fingerprint SHA256:{}", "ab".repeat(32)),
        };
        let pdf = render(&letter).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert!(pdf.len() < 16 * 1024, "{} bytes", pdf.len());
        if let Ok(path) = std::env::var("RATHAUS_LETTER_SAMPLE") {
            std::fs::write(path, &pdf).unwrap();
        }
    }
}
