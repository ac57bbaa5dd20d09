//! Bulk provisioning and the end of departments, end to end: the real `rathaus` binary
//! against a real server on 127.0.0.1:0, `--json` output parsed as an outside script
//! would, the effects checked through other clients.

// Test code: a failed unwrap is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use rathaus_client::Client;
use rathaus_protocol::{DepartmentSlug, ErrorCode, GroupHandle};
use rathaus_tests::{workspace_bin, TestBackend};
use serde_json::Value;

/// Runs `rathaus --profile PROFILE --json ARGS…` and parses its one JSON document.
async fn rathaus_json(profile: &Path, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(workspace_bin("rathaus").unwrap())
            .arg("--profile")
            .arg(profile)
            .arg("--json")
            .args(args)
            .output(),
    )
    .await
    .expect("rathaus did not finish within 120 s")
    .unwrap();
    assert!(
        out.status.success(),
        "rathaus {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn setup() -> (TestBackend, Client) {
    let mut backend = TestBackend::start().await.unwrap();
    let mut admin = backend.admin().await.unwrap();
    for (slug, name) in [("bauamt", "Bauamt"), ("kaemmerei", "Kämmerei")] {
        admin
            .admin_add_department(DepartmentSlug::parse(slug).unwrap(), name, Vec::new())
            .await
            .unwrap();
    }
    (backend, admin)
}

fn refused_lines(report: &Value) -> Vec<u64> {
    report["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_twice_changes_nothing_and_bad_rows_are_reported_by_line() {
    let (backend, mut admin) = setup().await;
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("personal.csv");
    // As a German spreadsheet saves it: BOM, CRLF, a header, display names for departments.
    let text = "\u{feff}Personalnummer;Name;Abteilungen;Rollen\r\n\
                P1001;Anna Berg;Bauamt;author\r\n\
                P1002;Jörg Müller;Kämmerei, bauamt;\r\n\
                P1003;;bauamt;\r\n\
                P1004;Eva Schulz;kaemmerei\r\n\
                P1005;Max Ohne;Gartenamt;\r\n\
                P1006;Lena Vogt;;\r\n";
    std::fs::write(&csv, text).unwrap();
    let csv = csv.to_str().unwrap();

    let first = rathaus_json(admin.dir(), &["admin", "user", "import", csv]).await;
    assert_eq!(first["created"], 4, "{first}");
    assert_eq!(first["unchanged"], 0, "{first}");
    // Line 4 has no name, line 6 a department that does not exist; the rest went in.
    assert_eq!(refused_lines(&first), [4, 6], "{first}");
    let reasons = first["refused"].to_string();
    assert!(reasons.contains("name"), "{reasons}");
    assert!(reasons.contains("Gartenamt"), "{reasons}");

    let users = admin.admin_users().await.unwrap();
    let joerg = users.iter().find(|u| u.user.as_str() == "P1002").unwrap();
    assert_eq!(joerg.name, "Jörg Müller");
    let depts: Vec<&str> = joerg.departments.iter().map(|d| d.as_str()).collect();
    assert_eq!(depts, ["bauamt", "kaemmerei"]);
    let anna = users.iter().find(|u| u.user.as_str() == "P1001").unwrap();
    assert!(anna.roles.contains(&rathaus_protocol::Role::Author));
    let audit_before = admin.admin_audit().await.unwrap();
    let imported: Vec<&str> = audit_before
        .iter()
        .filter(|e| e.action == "user.add")
        .map(|e| e.target.as_str())
        .collect();
    assert_eq!(imported, ["P1001", "P1002", "P1004", "P1006"]);

    // Again: nothing new, nothing changed, the same lines refused.
    let second = rathaus_json(admin.dir(), &["admin", "user", "import", csv]).await;
    assert_eq!(second["created"], 0, "{second}");
    assert_eq!(second["unchanged"], 4, "{second}");
    assert_eq!(refused_lines(&second), [4, 6], "{second}");
    assert_eq!(admin.admin_users().await.unwrap(), users);
    assert_eq!(admin.admin_audit().await.unwrap().len(), audit_before.len());

    // A colleague whose row now differs is refused, saying how to change it; nobody moves.
    let moved = tmp.path().join("moved.csv");
    std::fs::write(&moved, "P1001;Anna Berg;kaemmerei;author\n").unwrap();
    let third = rathaus_json(
        admin.dir(),
        &["admin", "user", "import", moved.to_str().unwrap()],
    )
    .await;
    assert_eq!(third["created"], 0, "{third}");
    assert_eq!(refused_lines(&third), [1], "{third}");
    assert!(
        third["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("admin user departments"),
        "{third}"
    );
    assert_eq!(admin.admin_users().await.unwrap(), users);

    // The code the import handed out enrolls the colleague, who is in their department.
    let eva = first["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "P1004")
        .unwrap();
    let mut eva = backend
        .enroll("P1004", eva["enrollment_code"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        eva.whoami().await.unwrap().departments,
        [DepartmentSlug::parse("kaemmerei").unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_letter_carries_the_code_as_text_and_as_a_qr_code() {
    let (backend, admin) = setup().await;
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("neu.csv");
    std::fs::write(&csv, "P2001;Günther Groß;bauamt;\n").unwrap();
    let letters = tmp.path().join("briefe");
    let report = rathaus_json(
        admin.dir(),
        &[
            "admin",
            "user",
            "import",
            csv.to_str().unwrap(),
            "--letters",
            letters.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(report["created"], 1, "{report}");
    let code = report["users"][0]["enrollment_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let pdf = letters.join("P2001.pdf");
    let bytes = std::fs::read(&pdf).unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pdf).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a letter holds a secret: {mode:o}");
    }

    let doc = lopdf::Document::load_mem(&bytes).unwrap();
    // The code as text: shown by a text operator on the page.
    let (_, page) = doc.get_pages().into_iter().next().unwrap();
    let content = lopdf::content::Content::decode(&doc.get_page_content(page)).unwrap();
    let shown: Vec<Vec<u8>> = content
        .operations
        .iter()
        .filter(|op| op.operator == "Tj")
        .filter_map(|op| op.operands.first()?.as_str().ok().map(<[u8]>::to_vec))
        .collect();
    assert!(
        shown.iter().any(|s| s == code.as_bytes()),
        "the code is not on the page as text"
    );
    // The name in WinAnsi, umlauts and ß included.
    assert!(shown.iter().any(|s| s.ends_with(b"G\xfcnther Gro\xdf")));

    // The QR code: the embedded image, decoded, is the code.
    let image = doc
        .objects
        .values()
        .find_map(|o| match o {
            lopdf::Object::Stream(s)
                if s.dict.get(b"Subtype").ok().and_then(|n| n.as_name().ok())
                    == Some(b"Image".as_slice()) =>
            {
                Some(s.clone())
            }
            _ => None,
        })
        .expect("no image in the letter");
    let width = image.dict.get(b"Width").unwrap().as_i64().unwrap() as usize;
    let height = image.dict.get(b"Height").unwrap().as_i64().unwrap() as usize;
    let pixels = image.content;
    assert_eq!(pixels.len(), width * height);
    // One pixel per module in the file; scaled up as the page does, for the detector.
    let scale = 8;
    let mut prepared =
        rqrr::PreparedImage::prepare_from_greyscale(width * scale, height * scale, |x, y| {
            pixels[(y / scale) * width + x / scale]
        });
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the letter");
    let (_, decoded) = grids[0].decode().unwrap();
    assert_eq!(decoded, code);

    // And it enrolls Günther.
    let mut g = backend.enroll("P2001", &decoded).await.unwrap();
    assert_eq!(g.whoami().await.unwrap().name, "Günther Groß");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_is_renamed_and_retired_visibly() {
    let (backend, mut admin) = setup().await;
    let mut anna = backend
        .user(&mut admin, "P3001", "Anna Berg", &["bauamt"])
        .await
        .unwrap();
    let bauamt = GroupHandle::parse("bauamt").unwrap();
    anna.send_text(&bauamt, "Baustelle Marktplatz ab Montag")
        .await
        .unwrap();

    let renamed = rathaus_json(
        admin.dir(),
        &[
            "admin",
            "department",
            "rename",
            "bauamt",
            "--name",
            "Bau- und Planungsamt",
        ],
    )
    .await;
    assert_eq!(renamed["name"], "Bau- und Planungsamt");
    let groups = anna.groups().await.unwrap();
    let public = groups.iter().find(|g| g.handle == bauamt).unwrap();
    assert_eq!(public.name, "Bau- und Planungsamt");

    let removed = rathaus_json(admin.dir(), &["admin", "department", "remove", "bauamt"]).await;
    assert_eq!(removed["removed"], "bauamt");

    // Anna is off the department; neither of its groups is listed any more.
    assert!(anna.whoami().await.unwrap().departments.is_empty());
    let handles: Vec<String> = anna
        .groups()
        .await
        .unwrap()
        .iter()
        .map(|g| g.handle.to_string())
        .collect();
    assert!(
        !handles.iter().any(|h| h.starts_with("bauamt")),
        "{handles:?}"
    );
    // The public group ended with a final entry, and what was posted stays readable.
    let rows = anna.read(&bauamt).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].text, "Baustelle Marktplatz ab Montag");
    assert!(rows[1].text.contains("retired"), "{}", rows[1].text);
    assert!(rows[1].text.contains("bauamt/secret"), "{}", rows[1].text);
    // New posts are refused, saying why.
    let err = anna
        .send_text(&bauamt, "Noch jemand da?")
        .await
        .expect_err("a retired department takes no posts");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(err.to_string().contains("retired"), "{err}");
    // The slug is not given out again, and the audit log has both steps.
    let again = admin
        .admin_add_department(
            DepartmentSlug::parse("bauamt").unwrap(),
            "Bauamt",
            Vec::new(),
        )
        .await
        .expect_err("a retired slug is not reused");
    assert_eq!(again.code(), Some(ErrorCode::AlreadyExists));
    let audit = admin.admin_audit().await.unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .filter(|e| e.target == "bauamt")
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        ["department.add", "department.rename", "department.remove"]
    );
}
