//! The request body as a route sees it: its kind (JSON or a form), its
//! encoding (identity or gzip), the bytes as received and the bytes to
//! parse.

use std::io::{Read, Write};

use zeroize::Zeroizing;

use super::refusal::{Problem, Refusal};
use super::FORM;

/// What the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/json` (or another JSON type the route takes).
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
}

impl Kind {
    /// The kind of a body with `content_type`, if the route takes it.
    pub fn of(content_type: Option<&str>, accepted: &[String]) -> Result<Self, Refusal> {
        let mime = content_type
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if !accepted.contains(&mime) {
            return Err(Refusal::new(
                Problem::UnsupportedMediaType,
                format!("this route takes {} bodies", accepted.join(" or ")),
                "unsupported_media_type",
            ));
        }
        Ok(if mime == FORM { Self::Form } else { Self::Json })
    }
}

impl Encoding {
    /// The encoding a `Content-Encoding` header names, if it is one taken.
    pub fn of(content_encoding: Option<&str>) -> Result<Self, Refusal> {
        match content_encoding {
            None | Some("identity") => Ok(Self::Identity),
            Some(encoding) if encoding.eq_ignore_ascii_case("gzip") => Ok(Self::Gzip),
            Some(_) => Err(Refusal::new(
                Problem::UnsupportedMediaType,
                "only gzip content encoding is accepted",
                "unsupported_encoding",
            )),
        }
    }
}

/// A request body: as received, and decoded for parsing.
pub struct Body {
    /// JSON or form.
    pub kind: Kind,
    /// Identity or gzip.
    pub encoding: Encoding,
    raw: Zeroizing<Vec<u8>>,
    /// The gunzipped bytes, for a gzip body.
    decoded: Option<Zeroizing<Vec<u8>>>,
}

impl Body {
    /// Decodes `raw`: a gzip body must inflate to at most `limit` bytes.
    pub fn decode(
        kind: Kind,
        encoding: Encoding,
        raw: Zeroizing<Vec<u8>>,
        limit: usize,
    ) -> Result<Self, Refusal> {
        let decoded = match encoding {
            Encoding::Identity => None,
            Encoding::Gzip => {
                let mut decoded = Zeroizing::new(Vec::new());
                flate2::read::GzDecoder::new(raw.as_slice())
                    .take(limit as u64 + 1)
                    .read_to_end(&mut decoded)
                    .map_err(|_| {
                        Refusal::new(
                            Problem::Invalid,
                            "the gzip body does not decode",
                            "malformed_body",
                        )
                    })?;
                if decoded.len() > limit {
                    return Err(Refusal::new(
                        Problem::TooLarge,
                        format!("the decoded body is larger than {limit} bytes"),
                        "body_too_large",
                    ));
                }
                Some(decoded)
            }
        };
        Ok(Self {
            kind,
            encoding,
            raw,
            decoded,
        })
    }

    /// The bytes to parse (gunzipped).
    pub fn bytes(&self) -> &[u8] {
        self.decoded.as_deref().unwrap_or(&self.raw)
    }

    /// The bytes as received, to forward when nothing changed.
    pub fn into_raw(self) -> Zeroizing<Vec<u8>> {
        self.raw
    }

    /// `plain`, encoded as this body was.
    pub fn encode(&self, plain: Vec<u8>) -> std::io::Result<Vec<u8>> {
        match self.encoding {
            Encoding::Identity => Ok(plain),
            Encoding::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(&plain)?;
                encoder.finish()
            }
        }
    }
}
