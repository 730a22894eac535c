//! The JSONPath selector compiler (configuration input): any text either
//! compiles or is refused, a compiled selector runs on a document, and a
//! selector that also compiles to plain steps selects, walking the bytes,
//! exactly what it selects on the parsed document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenvault::payload::{self, Selector};

/// serde_json_path 0.7 panics on some unfinished text (found here:
/// `$['0\u`); `Selector::parse` catches that panic and refuses the text.
/// libFuzzer's hook would abort on the caught panic all the same, so this
/// target's hook lets that crate's panics pass and aborts on any other.
fn abort_on_panics_but_the_parsers_caught_one() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = info
                .location()
                .is_some_and(|l| l.file().contains("serde_json_path"));
            if !caught {
                libfuzzer(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    abort_on_panics_but_the_parsers_caught_one();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let _ = selector.member_names();
    let body = br#"{"d": [{"identity": "a", "profileData": {"Email": "x@example.com", "n": [1, 2], "0": null}}, {"b": true, "a": -1.5e3}], "e": {"f": "g", "x/y~": "h"}}"#;
    let document = payload::parse_strict(body, 16).expect("the document parses");
    let selected = payload::select(&document, &[&selector]);
    if let Some(rules) = payload::path::plain(&[&selector]) {
        let walked = payload::path::select(body, &rules);
        match (selected, walked) {
            (Ok(selected), Ok(walked)) => {
                let selected: Vec<(&str, bool)> = selected
                    .iter()
                    .map(|f| (f.pointer.as_str(), f.was_number))
                    .collect();
                let walked: Vec<(&str, bool)> = walked
                    .iter()
                    .map(|m| {
                        (
                            m.pointer.as_str(),
                            m.leaf == Some(payload::splice::Leaf::Number),
                        )
                    })
                    .collect();
                assert_eq!(selected, walked, "{text}");
            }
            (Err(_), Err(_)) => {}
            (selected, walked) => panic!("{text}: {selected:?} against {walked:?}"),
        }
    }
});
