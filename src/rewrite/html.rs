//! Streaming HTML rewriting: each chunk of a page goes through lol_html as it arrives and comes
//! out with the token added to its same-origin links; the page is never held whole, and the
//! rewriter's memory is bounded (past the bound it passes the rest through unchanged).
//!
//! Why one file of this length: a page's handlers and the documents inside it (`srcdoc`,
//! `<noscript>`) share one tagger and one memory bound, and what a browser will see of a page
//! is audited in one place; a third of it is tests.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::{GzDecoder, GzEncoder, ZlibDecoder};
use lol_html::html_content::Element;
use lol_html::send::{HtmlRewriter, Settings};
use lol_html::{
    AsciiCompatibleEncoding, ElementContentHandlers, HandlerResult, HandlerTypes, MemorySettings,
    OutputSink, Selector, element,
};
use std::borrow::Cow;

use super::link::{Led, Tagger, tag_refresh};

/// Pages whose rewriting failed (the rest passed unchanged, or a corrupt compressed page was
/// cut): a counter for the metrics.
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many pages failed to rewrite since the process started.
pub fn rewrite_errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

/// Most memory the rewriter may buffer (an element's start tag, mostly).
const MAX_MEMORY: usize = 1 << 20;

/// Whether a response with this `Content-Type` is a page to rewrite: HTML in a charset that
/// keeps ASCII as ASCII (UTF-16 does not, and is passed through). XHTML is not: an XML parser
/// reads it, which an HTML rewriter cannot judge for (see `proxy::url_tracking`).
pub fn html_charset(content_type: &str) -> Option<Option<String>> {
    let mime = crate::content_type::parse(content_type.as_bytes())?;
    if !mime.is_html() {
        return None;
    }
    let charset = mime
        .charset
        .map(|c| String::from_utf8_lossy(&c).into_owned());
    if let Some(c) = &charset {
        let enc = encoding_rs::Encoding::for_label(c.as_bytes())?;
        AsciiCompatibleEncoding::new(enc)?;
    }
    Some(charset)
}

/// The rewriter's output, collected between two chunks of input.
struct Collect(Arc<Mutex<Vec<u8>>>);

impl OutputSink for Collect {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(chunk);
    }
}

/// How a page arrives: as it is, or compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Not compressed.
    Identity,
    /// `gzip`.
    Gzip,
    /// `deflate` (zlib).
    Deflate,
    /// `br`.
    Brotli,
}

impl Coding {
    /// The coding a `Content-Encoding` value names; `None` for one we cannot decode.
    pub fn from_header(value: Option<&str>) -> Option<Coding> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "identity") => Some(Coding::Identity),
            Some("gzip" | "x-gzip") => Some(Coding::Gzip),
            Some("deflate") => Some(Coding::Deflate),
            Some("br") => Some(Coding::Brotli),
            Some(_) => None,
        }
    }
}

/// The rewriter as a `Write`, so that a decoder in write mode can feed it. It holds the
/// page's first two bytes until it has them: a UTF-16 byte order mark makes a browser read
/// the page as UTF-16, whatever its `Content-Type` says, and the rewriter cannot read that.
struct Feed {
    rewriter: HtmlRewriter<'static, Collect>,
    /// The first bytes, until there are two (then `None`).
    start: Option<Vec<u8>>,
    /// `Content-Type` named no charset: a browser may guess one from the bytes.
    unlabelled: bool,
}

impl Feed {
    fn new(rewriter: HtmlRewriter<'static, Collect>, unlabelled: bool) -> Feed {
        Feed {
            rewriter,
            start: Some(Vec::new()),
            unlabelled,
        }
    }

    /// A page without a charset in its `Content-Type` may be guessed to be ISO-2022-JP by a
    /// browser (Chromium's detector does) from its escape sequences, and read as markup the
    /// rewriter did not see: no HTML needs a raw ESC byte, so such a page is cut.
    fn check(&self, buf: &[u8]) -> io::Result<()> {
        if self.unlabelled && buf.contains(&0x1B) {
            return Err(io::Error::other(
                "an escape byte in a page without a charset",
            ));
        }
        Ok(())
    }

    /// Hands over the first bytes once they tell, or at the end.
    fn pass_start(&mut self) -> io::Result<()> {
        if let Some(start) = self.start.take() {
            if start.starts_with(&[0xFE, 0xFF]) || start.starts_with(&[0xFF, 0xFE]) {
                return Err(io::Error::other("a UTF-16 page the rewriter cannot read"));
            }
            self.rewriter.write(&start).map_err(io::Error::other)?;
        }
        Ok(())
    }

    fn end(mut self) -> io::Result<()> {
        self.pass_start()?;
        self.rewriter.end().map_err(io::Error::other)
    }
}

impl Write for Feed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check(buf)?;
        match &mut self.start {
            Some(start) if start.len() + buf.len() < 2 => start.extend_from_slice(buf),
            Some(start) => {
                start.extend_from_slice(buf);
                self.pass_start()?;
            }
            None => self.rewriter.write(buf).map_err(io::Error::other)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the page's bytes go: straight into the rewriter, or through a decoder first.
enum Input {
    Plain(Feed),
    Gzip(GzDecoder<Feed>),
    Deflate(ZlibDecoder<Feed>),
    Brotli(Box<brotli::DecompressorWriter<Feed>>),
}

impl Input {
    fn write_all(&mut self, chunk: &[u8]) -> io::Result<()> {
        match self {
            Input::Plain(f) => f.write_all(chunk),
            Input::Gzip(d) => d.write_all(chunk),
            Input::Deflate(d) => d.write_all(chunk),
            Input::Brotli(d) => d.write_all(chunk),
        }
    }

    /// The end of the input: the decoder's last bytes go in, then the rewriter ends.
    fn end(self) -> io::Result<()> {
        let feed = match self {
            Input::Plain(f) => f,
            Input::Gzip(d) => d.finish()?,
            Input::Deflate(d) => d.finish()?,
            Input::Brotli(d) => d
                .into_inner()
                .map_err(|_| io::Error::other("truncated brotli stream"))?,
        };
        feed.end()
    }
}

/// Why a page could not be rewritten to its end.
#[derive(Debug, thiserror::Error)]
#[error("rewriting the page failed: {0}")]
pub struct RewriteError(#[from] io::Error);

/// One page being rewritten.
pub struct Html {
    /// `None` once ended, or after an error (the page is cut there: what follows was not
    /// read, and could widen the referrer policy, or carry someone else's token).
    input: Option<Input>,
    /// Output compression, when the client takes gzip and the page came compressed.
    gzip: Option<GzEncoder<Vec<u8>>>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl std::fmt::Debug for Html {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Html")
            .field("active", &self.input.is_some())
            .field("gzip", &self.gzip.is_some())
            .finish()
    }
}

impl Html {
    /// A rewriter for a page in `charset` (from `Content-Type`; without one, UTF-8 unless a
    /// `<meta charset>` says otherwise) that tags the URLs in the (element, attribute) pairs
    /// `links` (meta refresh and `<base href>` are always handled), arriving in `coding`, and
    /// sent on gzipped if `gzip_out`.
    pub fn new(
        tagger: Tagger,
        charset: Option<&str>,
        links: &[(String, String)],
        coding: Coding,
        gzip_out: bool,
    ) -> Html {
        let out = Arc::new(Mutex::new(Vec::new()));
        let feed = Feed::new(
            HtmlRewriter::new(settings(tagger, charset, links), Collect(out.clone())),
            charset.is_none(),
        );
        let input = match coding {
            Coding::Identity => Input::Plain(feed),
            Coding::Gzip => Input::Gzip(GzDecoder::new(feed)),
            Coding::Deflate => Input::Deflate(ZlibDecoder::new(feed)),
            Coding::Brotli => Input::Brotli(Box::new(brotli::DecompressorWriter::new(feed, 4096))),
        };
        Html {
            input: Some(input),
            gzip: gzip_out.then(|| GzEncoder::new(Vec::new(), Compression::fast())),
            out,
        }
    }

    /// Rewrites the next chunk of the page; returns what is ready to send (possibly nothing
    /// yet: a tag cut by the chunk boundary waits for the next one).
    ///
    /// # Errors
    /// The page cannot be rewritten to its end: a compressed page is corrupt, a tag is over
    /// the memory bound, markup browsers may read two ways, a charset the rewriter cannot
    /// read. It is cut there: passing the rest on unread would let it hand a client someone
    /// else's token, or send the page's URL elsewhere.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, RewriteError> {
        let Some(input) = &mut self.input else {
            return Ok(Bytes::copy_from_slice(chunk));
        };
        if let Err(e) = input.write_all(chunk) {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            self.input = None;
            tracing::warn!(error = %e, "HTML rewriting failed; the page is cut");
            return Err(e.into());
        }
        let out = self.take();
        self.encode(&out, false)
    }

    /// The end of the page: whatever the decoder and rewriter still held.
    ///
    /// # Errors
    /// As for [`Html::feed`]: a compressed page that ends early, a guarded one that cannot be
    /// finished.
    pub fn finish(&mut self) -> Result<Bytes, RewriteError> {
        if let Some(input) = self.input.take()
            && let Err(e) = input.end()
        {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "HTML rewriting failed at the end of the page");
            return Err(e.into());
        }
        let out = self.take();
        self.encode(&out, true)
    }

    /// Compresses output if the client gets gzip: each chunk flushed (a sync flush), so that
    /// the page keeps streaming.
    fn encode(&mut self, out: &[u8], last: bool) -> Result<Bytes, RewriteError> {
        let Some(gz) = &mut self.gzip else {
            return Ok(Bytes::copy_from_slice(out));
        };
        if !out.is_empty() {
            gz.write_all(out)?;
            gz.flush()?;
        }
        if last {
            let gz = self.gzip.take().map(GzEncoder::finish).transpose()?;
            return Ok(Bytes::from(gz.unwrap_or_default()));
        }
        Ok(Bytes::from(std::mem::take(gz.get_mut())))
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.out.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The HTML namespace: a `<base>` in SVG or MathML is not the document's.
const HTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";

/// Referrer policies that never send a page's URL (nor its path) to another origin.
fn keeps_referrer_home(policy: &str) -> bool {
    matches!(
        policy.trim().to_ascii_lowercase().as_str(),
        "no-referrer" | "same-origin"
    )
}

/// How deep documents inside documents (a frame's `srcdoc`, a `<noscript>`'s content) are
/// rewritten; deeper ones go.
const MAX_NESTED_DEPTH: u8 = 3;

/// The guards of a page whose URL carries a token, as element handlers (for the page as it
/// streams, and for the documents its frames' `srcdoc` hold).
///
/// A page's `<meta name=referrer>` beats the `Referrer-Policy` header: on such a page it may
/// only narrow it.
fn narrow_meta_referrer<H: HandlerTypes>(el: &mut Element<'_, '_, H>) -> HandlerResult {
    let named = el.get_attribute("name").is_some_and(|n| {
        htmlize::unescape_attribute(&n)
            .trim()
            .eq_ignore_ascii_case("referrer")
    });
    let kept = el
        .get_attribute("content")
        .is_some_and(|c| keeps_referrer_home(&htmlize::unescape_attribute(&c)));
    if named && !kept {
        el.set_attribute("content", "same-origin")?;
    }
    Ok(())
}

/// So does an element's own `referrerpolicy` (links, images, frames, scripts...).
fn strip_referrer_policy<H: HandlerTypes>(el: &mut Element<'_, '_, H>) -> HandlerResult {
    let kept = el
        .get_attribute("referrerpolicy")
        .is_some_and(|p| keeps_referrer_home(&htmlize::unescape_attribute(&p)));
    if !kept {
        el.remove_attribute("referrerpolicy");
    }
    Ok(())
}

/// Hyperlink auditing sends the page's URL (`Ping-From`) and the link's, token and all
/// (`Ping-To`), wherever the ping goes.
fn strip_ping<H: HandlerTypes>(el: &mut Element<'_, '_, H>) -> HandlerResult {
    el.remove_attribute("ping");
    Ok(())
}

/// Text for an attribute value that a browser decodes back to `s` (lol_html escapes `"`
/// only).
fn escape_for_attribute(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// The rewriter's settings: the charset, bounded memory, and a handler per element that
/// carries a URL; for a page whose URL carries a token, handlers that keep the page from
/// sending that URL to another site.
fn settings(
    tagger: Tagger,
    charset: Option<&str>,
    links: &[(String, String)],
) -> Settings<'static, 'static> {
    let encoding = charset
        .and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes()))
        .and_then(AsciiCompatibleEncoding::new)
        .unwrap_or_else(AsciiCompatibleEncoding::utf_8);
    let guard = tagger.guards();
    let charset_given = charset.is_some();
    let tagger = Arc::new(Mutex::new(tagger));
    // Pages are read strictly (markup that browsers may read two ways is an error) and never
    // bail out into passing bytes through unread: they are cut instead (`Html::feed`).
    let link = |attr: String, tagger: Arc<Mutex<Tagger>>| {
        move |el: &mut Element<'_, '_, _>| tag_link(el, &attr, &tagger)
    };
    // Open <template> elements: what is inside one is not (yet) part of the document.
    let templates = Arc::new(AtomicUsize::new(0));
    let in_template = templates.clone();
    let base_seen = Arc::new(AtomicBool::new(false));
    let base_tagger = tagger.clone();
    let meta_tagger = tagger.clone();
    let mut settings = Settings::new_send()
        .with_encoding(encoding)
        .with_adjust_charset_on_meta_tag(charset.is_none())
        .with_strict(true)
        .with_memory_settings(
            MemorySettings::new()
                .with_max_allowed_memory_usage(MAX_MEMORY)
                .with_graceful_bail_out_on_memory_limit_exceeded(false),
        )
        .append_element_content_handler(element!("template", move |el| {
            if el.namespace_uri() == HTML_NAMESPACE {
                templates.fetch_add(1, Ordering::Relaxed);
                let closing = templates.clone();
                // A template without an end tag keeps everything after it inside.
                let _ = el.on_end_tag(lol_html::end_tag!(move |_| {
                    let _ = closing
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    Ok(())
                }));
            }
            Ok(())
        }))
        .append_element_content_handler(element!("base[href]", move |el| {
            // Only the first <base href> the browser honours counts: the document's own
            // (HTML namespace, not inside a template), wherever it stands. Tagged links are
            // absolute, so no later one can move them.
            if el.namespace_uri() == HTML_NAMESPACE
                && in_template.load(Ordering::Relaxed) == 0
                && !base_seen.swap(true, Ordering::Relaxed)
                && let Some(href) = el.get_attribute("href")
            {
                lock(&base_tagger).set_base(&href);
            }
            Ok(())
        }))
        // A charset the rewriter cannot read (ISO-2022-JP: ASCII bytes inside its two-byte
        // runs are not markup) would let a browser see markup the rewriter did not: such a
        // page is cut (it may name one only when `Content-Type` names none).
        .append_element_content_handler(element!("meta", move |el| {
            if charset_given {
                return Ok(());
            }
            let label = el.get_attribute("charset").or_else(|| {
                let equiv = el.get_attribute("http-equiv")?;
                if !equiv.trim().eq_ignore_ascii_case("content-type") {
                    return None;
                }
                let content = el.get_attribute("content")?.to_ascii_lowercase();
                let at = content.find("charset=")? + "charset=".len();
                Some(content[at..].trim_matches(['"', '\'', ' ']).to_owned())
            });
            let unreadable = label
                .as_deref()
                .and_then(|l| encoding_rs::Encoding::for_label(l.trim().as_bytes()))
                .is_some_and(|e| {
                    // A page that names UTF-16 is read as UTF-8 (the HTML standard).
                    !e.is_ascii_compatible()
                        && e != encoding_rs::UTF_16LE
                        && e != encoding_rs::UTF_16BE
                });
            if unreadable {
                return Err("a page in a charset the rewriter cannot read".into());
            }
            Ok(())
        }))
        .append_element_content_handler(element!("meta[http-equiv][content]", move |el| {
            refresh(el, &meta_tagger)
        }));
    if guard {
        settings = settings
            .append_element_content_handler(element!("meta[name]", narrow_meta_referrer))
            .append_element_content_handler(element!("[referrerpolicy]", strip_referrer_policy))
            .append_element_content_handler(element!("[ping]", strip_ping));
    }
    // Documents inside the page: a frame's srcdoc (whose requests carry the page's URL as
    // Referer, under a policy it sets itself) and <noscript> (which a browser without
    // scripts reads as markup, where the rewriter read text) are rewritten as the page is.
    let nested = Nested {
        tagger: tagger.clone(),
        links: links.to_vec().into(),
        guard,
    };
    let in_srcdoc = nested.clone();
    let noscript = Mutex::new(Noscript {
        nested: nested.clone(),
        held: String::new(),
        overflowed: false,
    });
    settings = settings
        .append_element_content_handler(element!("iframe[srcdoc]", move |el| {
            in_srcdoc.srcdoc(el, 0)
        }))
        .append_element_content_handler(lol_html::text!("noscript", move |chunk| {
            noscript
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(chunk, 0);
            Ok(())
        }));
    settings = with_scrubbed_elements!(settings, tagger);
    for (element, attr) in links {
        // The pairs were checked when the configuration was read; one that does not parse
        // anyway is skipped rather than failing the response.
        let Ok(selector) = format!("{element}[{attr}]").parse::<Selector>() else {
            continue;
        };
        settings = settings.append_element_content_handler((
            Cow::Owned(selector),
            ElementContentHandlers::default().element(link(attr.clone(), tagger.clone())),
        ));
    }
    settings
}

/// Tags the URL of a `<meta http-equiv=refresh>` (or takes someone else's token out of it).
fn refresh<H: HandlerTypes>(el: &mut Element<'_, '_, H>, tagger: &Mutex<Tagger>) -> HandlerResult {
    let is_refresh = el.get_attribute("http-equiv").is_some_and(|v| {
        htmlize::unescape_attribute(&v)
            .trim()
            .eq_ignore_ascii_case("refresh")
    });
    if is_refresh
        && let Some(content) = el.get_attribute("content")
        && let Some(tagged) = tag_refresh(&lock(tagger), &content)
    {
        el.set_attribute("content", &tagged)?;
    }
    Ok(())
}

/// Tags the URL in `el`'s `attr`, if it gets the token or a code (or loses someone else's).
fn tag_link<H: HandlerTypes>(
    el: &mut Element<'_, '_, H>,
    attr: &str,
    tagger: &Mutex<Tagger>,
) -> HandlerResult {
    if let Some(value) = el.get_attribute(attr) {
        let tagged = lock(tagger).tag_attribute(&value);
        if let Some((tagged, led)) = tagged {
            // A link to a sibling carries a code the sibling redeems only when the Referer
            // names this host: sent as the origin alone, never the path.
            if led == Led::Sibling {
                el.set_attribute("referrerpolicy", "origin")?;
            }
            el.set_attribute(attr, &tagged)?;
        }
    }
    Ok(())
}

/// Most of a `<noscript>`'s content that is rewritten; past it, the content goes.
const MAX_NOSCRIPT: usize = 256 * 1024;

/// How a page's nested documents are rewritten: with the page's tagger and links, and its
/// guards if it has them.
#[derive(Clone)]
struct Nested {
    tagger: Arc<Mutex<Tagger>>,
    links: Arc<[(String, String)]>,
    guard: bool,
}

/// The start of the name of an element no page writes, put after a `<noscript>`'s content
/// when it is read again: if it is not found as an element, the content ended inside a tag,
/// an attribute, a comment or raw text, where a browser would go on reading what follows
/// differently. The rest of the name is random, made for each reading, so that no page can
/// write one that ends the fragment early; content that names the prefix is refused.
const SENTINEL: &str = "sessiongate-end-";

/// A sentinel element's name for one reading (see [`SENTINEL`]).
fn sentinel() -> Option<String> {
    let mut random = [0u8; 12];
    aws_lc_rs::rand::fill(&mut random).ok()?;
    let mut name = String::from(SENTINEL);
    for b in random {
        name.push_str(&format!("{b:02x}"));
    }
    Some(name)
}

impl Nested {
    /// A frame's `srcdoc`, rewritten (or, nested too deep or unreadable, gone).
    fn srcdoc<H: HandlerTypes>(&self, el: &mut Element<'_, '_, H>, depth: u8) -> HandlerResult {
        if let Some(raw) = el.get_attribute("srcdoc") {
            match self.rewrite(&htmlize::unescape_attribute(&raw), depth + 1, false) {
                Some(safe) => el.set_attribute("srcdoc", &escape_for_attribute(&safe))?,
                None => el.remove_attribute("srcdoc"),
            }
        }
        Ok(())
    }

    /// `html` (a whole srcdoc document, or a noscript's content when `fragment`) rewritten
    /// as the page is; `None` past [`MAX_NESTED_DEPTH`], if it cannot be read, or (a
    /// fragment) if it does not end where it began, outside any tag or raw text.
    fn rewrite(&self, html: &str, depth: u8, fragment: bool) -> Option<String> {
        if depth > MAX_NESTED_DEPTH {
            return None;
        }
        let sentinel = match fragment {
            true if html.to_ascii_lowercase().contains(SENTINEL) => return None,
            true => Some(sentinel()?),
            false => None,
        };
        let ended = std::cell::Cell::new(false);
        let noscript = std::cell::RefCell::new(Noscript {
            nested: self.clone(),
            held: String::new(),
            overflowed: false,
        });
        let mut settings = lol_html::RewriteStrSettings::new()
            .append_element_content_handler(element!("iframe[srcdoc]", |el| {
                self.srcdoc(el, depth)
            }))
            .append_element_content_handler(lol_html::text!("noscript", |chunk| {
                noscript.borrow_mut().take(chunk, depth);
                Ok(())
            }))
            // A refresh navigates the frame (or, in a noscript, the page).
            .append_element_content_handler(element!("meta[http-equiv][content]", |el| {
                refresh(el, &self.tagger)
            }));
        if let Some(name) = &sentinel {
            let selector = name.parse::<Selector>().ok()?;
            settings = settings.append_element_content_handler((
                Cow::Owned(selector),
                ElementContentHandlers::default().element(|el: &mut Element<'_, '_>| {
                    ended.set(true);
                    el.remove();
                    Ok(())
                }),
            ));
        }
        if self.guard {
            settings = settings
                .append_element_content_handler(element!("meta[name]", narrow_meta_referrer))
                .append_element_content_handler(element!("[referrerpolicy]", strip_referrer_policy))
                .append_element_content_handler(element!("[ping]", strip_ping));
        }
        for (element, attr) in self.links.iter() {
            let Ok(selector) = format!("{element}[{attr}]").parse::<Selector>() else {
                continue;
            };
            let tagger = self.tagger.clone();
            settings = settings.append_element_content_handler((
                Cow::Owned(selector),
                ElementContentHandlers::default()
                    .element(move |el: &mut Element<'_, '_>| tag_link(el, attr, &tagger)),
            ));
        }
        let settings = with_scrubbed_elements!(settings, self.tagger);
        let input = match &sentinel {
            Some(name) => format!("{html}<{name}></{name}>"),
            None => html.to_owned(),
        };
        let settings: lol_html::Settings<'_, '_> = settings.into();
        let out = lol_html::rewrite_str(&input, settings.with_strict(true)).ok()?;
        if fragment && (!ended.get() || out.to_ascii_lowercase().contains("</noscript")) {
            return None;
        }
        Some(out)
    }
}

/// A `<noscript>`'s content, held as it comes in chunks, then written back rewritten (see
/// [`Nested`]), or dropped if it cannot be.
struct Noscript {
    nested: Nested,
    held: String,
    overflowed: bool,
}

impl Noscript {
    fn take(&mut self, chunk: &mut lol_html::html_content::TextChunk<'_>, depth: u8) {
        if !self.overflowed {
            self.held.push_str(chunk.as_str());
            self.overflowed = self.held.len() > MAX_NOSCRIPT;
        }
        if !chunk.last_in_text_node() {
            chunk.remove();
            return;
        }
        let held = std::mem::take(&mut self.held);
        let overflowed = std::mem::replace(&mut self.overflowed, false);
        match self
            .nested
            .rewrite(&held, depth + 1, true)
            .filter(|_| !overflowed)
        {
            Some(out) => chunk.replace(&out, lol_html::html_content::ContentType::Html),
            None => chunk.remove(),
        }
    }
}

/// Adds to `settings` the handlers for what carries a URL outside the route's list, that a
/// page could use to hand a client someone else's token or code: an SVG link's
/// `xlink:href`, a GET form's field (any submittable element) named like the parameter
/// (which the submission puts in the query). Only someone else's parameter is taken out; nothing is tagged. (A macro: the
/// page's streaming settings and a nested document's take different handler types.)
macro_rules! with_scrubbed_elements {
    ($settings:expr, $tagger:expr) => {{
        let svg_tagger = $tagger.clone();
        let form_tagger = $tagger.clone();
        $settings
            .append_element_content_handler(element!("a", move |el| {
                let Some(raw) = el.get_attribute("xlink:href") else {
                    return Ok(());
                };
                if let Some(clean) = lock(&svg_tagger).scrub_attribute(&raw) {
                    el.set_attribute("xlink:href", &clean)?;
                }
                Ok(())
            }))
            .append_element_content_handler(element!(
                "input[name], button[name], select[name], textarea[name]",
                move |el| {
                    let named = el.get_attribute("name").is_some_and(|n| {
                        lock(&form_tagger).is_scrubbed(&htmlize::unescape_attribute(&n))
                    });
                    if named {
                        el.remove_attribute("name");
                    }
                    Ok(())
                }
            ))
    }};
}
use with_scrubbed_elements;

fn lock(t: &Mutex<Tagger>) -> std::sync::MutexGuard<'_, Tagger> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<(String, String)> {
        crate::config::DEFAULT_LINKS
            .iter()
            .map(|(e, a)| ((*e).to_owned(), (*a).to_owned()))
            .collect()
    }

    fn rewrite_in_chunks(page: &str, chunk: usize) -> String {
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/dir/").unwrap();
        let mut html = Html::new(tagger, None, &links(), Coding::Identity, false);
        let mut out = Vec::new();
        for c in page.as_bytes().chunks(chunk.max(1)) {
            out.extend_from_slice(&html.feed(c).unwrap());
        }
        out.extend_from_slice(&html.finish().unwrap());
        String::from_utf8(out).unwrap()
    }

    const PAGE: &str = r##"<!doctype html><html><head>
<meta http-equiv="Refresh" content="30; url=/again">
</head><body>
<a href="cart">cart</a> <a href="https://elsewhere.example/">out</a> <a href="#top">top</a>
<a href="mailto:a@shop.example">mail</a> <area href="/map"> <iframe src="frame.html"></iframe>
<frame src="left.html">
<form action="/search" method="get"><input name="q"></form>
<form method="post" action="/login"></form>
<script>var s = '<a href="/not-a-link">';</script>
</body></html>"##;

    #[test]
    fn same_origin_links_forms_frames_and_refresh_get_the_token() {
        let out = rewrite_in_chunks(PAGE, 1 << 16);
        for want in [
            r#"content="30; url=http://shop.example/again;sgsid=T""#,
            r#"href="http://shop.example/dir/cart;sgsid=T""#,
            r#"href="https://elsewhere.example/""#,
            r##"href="#top""##,
            r#"href="mailto:a@shop.example""#,
            r#"area href="http://shop.example/map;sgsid=T""#,
            r#"src="http://shop.example/dir/frame.html;sgsid=T""#,
            r#"src="http://shop.example/dir/left.html;sgsid=T""#,
            r#"action="http://shop.example/search;sgsid=T""#,
            r#"action="http://shop.example/login;sgsid=T""#,
            r#"'<a href="/not-a-link">'"#,
        ] {
            assert!(out.contains(want), "{want} missing from {out}");
        }
    }

    /// The page cut at random places (xorshift; `SG_CHUNK_SEED` replays a failing run).
    fn rewrite_at_random_cuts(page: &str, seed: u64) -> String {
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/dir/").unwrap();
        let mut html = Html::new(tagger, None, &links(), Coding::Identity, false);
        let (mut x, mut rest, mut out) = (seed | 1, page.as_bytes(), Vec::new());
        while !rest.is_empty() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 97 + 1) as usize;
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            out.extend_from_slice(&html.feed(chunk).unwrap());
            rest = tail;
        }
        out.extend_from_slice(&html.finish().unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn any_chunking_gives_the_same_page() {
        let whole = rewrite_in_chunks(PAGE, 1 << 16);
        for size in 1..=64 {
            assert_eq!(rewrite_in_chunks(PAGE, size), whole, "chunk size {size}");
        }
        let seeds: Vec<u64> = match std::env::var("SG_CHUNK_SEED") {
            Ok(s) => vec![s.parse().expect("SG_CHUNK_SEED is a number")],
            Err(_) => (1..=200).map(|i| i * 7919).collect(),
        };
        for seed in seeds {
            assert_eq!(
                rewrite_at_random_cuts(PAGE, seed),
                whole,
                "random cuts, SG_CHUNK_SEED={seed}"
            );
        }
    }

    #[test]
    fn the_element_set_is_the_routes_choice() {
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/").unwrap();
        let only_img = [("img".to_owned(), "src".to_owned())];
        let mut html = Html::new(tagger, None, &only_img, Coding::Identity, false);
        let mut out = html
            .feed(br#"<a href="/a">a</a><img src="/i.png"><form action="/f"></form>"#)
            .unwrap()
            .to_vec();
        out.extend_from_slice(&html.finish().unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"<a href="/a">a</a><img src="http://shop.example/i.png;sgsid=T"><form action="/f"></form>"#
        );
    }

    #[test]
    fn malformed_html_passes_through_unbroken() {
        let page = "<p>unclosed <b>bold <a href=/x>x<div <<>> 1 < 2 && 3 > 2 \
                    <a href='y' title=\"q\"uote\">y</a></table></p></p><!-- never closed <a href=/z>";
        let out = rewrite_in_chunks(page, 5);
        assert_eq!(out, rewrite_in_chunks(page, 1 << 16));
        // Only the tags whose links change are written anew, the way a browser parses them
        // (`title="q"uote"` is `title="q"` and an attribute `uote"`); the rest is untouched.
        let expected = page
            .replace("href=/x>", "href=\"http://shop.example/x;sgsid=T\">")
            .replace(
                "href='y' title=\"q\"uote",
                "href=\"http://shop.example/dir/y;sgsid=T\" title=\"q\" uote",
            );
        assert_eq!(out, expected);
    }

    #[test]
    fn a_base_elsewhere_keeps_relative_links_clean() {
        let out = rewrite_in_chunks(
            r#"<base href="https://cdn.example/"><a href="x">x</a><base href="/y/"><a href="/abs">a</a>"#,
            7,
        );
        assert!(out.contains(r#"href="x""#), "{out}");
        // The second <base> does not count; absolute-path links still leave for the CDN.
        assert!(out.contains(r#"href="/abs""#), "{out}");
    }

    #[test]
    fn only_the_base_a_browser_honours_counts_and_tagged_links_outlive_any_base() {
        for (page, want) in [
            // In a template or SVG: not the document's base.
            (
                r#"<template><base href="https://cdn.example/"></template><a href="x">x</a>"#,
                r#"href="http://shop.example/dir/x;sgsid=T""#,
            ),
            (
                r#"<svg><base href="https://cdn.example/"/></svg><a href="x">x</a>"#,
                r#"href="http://shop.example/dir/x;sgsid=T""#,
            ),
            // A same-origin base, decoded.
            (
                r#"<base href="&sol;y&sol;"><a href="x">x</a>"#,
                r#"href="http://shop.example/y/x;sgsid=T""#,
            ),
            // A base after the link: the tagged link is absolute already.
            (
                r#"<a href="x">x</a><base href="https://cdn.example/">"#,
                r#"href="http://shop.example/dir/x;sgsid=T""#,
            ),
        ] {
            let out = rewrite_in_chunks(page, 5);
            assert!(out.contains(want), "{page}: {out}");
        }
    }

    fn guarded(page: &str) -> String {
        let whole = guarded_in_chunks(page, page.len());
        for chunk in [1, 3, 17] {
            assert_eq!(guarded_in_chunks(page, chunk), whole, "chunks of {chunk}");
        }
        whole
    }

    fn guarded_in_chunks(page: &str, chunk: usize) -> String {
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/")
            .unwrap()
            .guarding();
        let mut html = Html::new(tagger, None, &links(), Coding::Identity, false);
        let mut out = Vec::new();
        for c in page.as_bytes().chunks(chunk.max(1)) {
            out.extend_from_slice(&html.feed(c).unwrap());
        }
        out.extend_from_slice(&html.finish().unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_guarded_page_cannot_widen_its_referrer_policy_nor_ping() {
        let out = guarded(
            r#"<meta name="Referr&#101;r" content="unsafe-url"><meta name=referrer content="no-referrer"><img referrerpolicy="unsafe&#45;url" src="https://x.example/i"><a ping="https://x.example/p" referrerpolicy=same-origin href="/a">a</a>"#,
        );
        assert_eq!(
            out,
            r#"<meta name="Referr&#101;r" content="same-origin"><meta name=referrer content="no-referrer"><img src="https://x.example/i"><a referrerpolicy=same-origin href="http://shop.example/a;sgsid=T">a</a>"#
        );
        // A frame's srcdoc document is guarded too, however deep.
        let out = guarded(
            r#"<iframe srcdoc="<meta name=referrer content=unsafe-url><iframe srcdoc='&lt;img referrerpolicy=unsafe-url src=x&gt;'></iframe>"></iframe>"#,
        );
        assert_eq!(
            out,
            r#"<iframe srcdoc="&lt;meta name=referrer content=&quot;same-origin&quot;>&lt;iframe srcdoc=&quot;&amp;lt;img src=x>&quot;>&lt;/iframe>"></iframe>"#
        );
        // What a browser without scripts reads in <noscript> is guarded and tagged too.
        let out = guarded(
            r#"<noscript><meta name=referrer content=unsafe-url><a href="/x" ping="//e/p">x</a><img referrerpolicy=unsafe-url src=//e/i></noscript>"#,
        );
        assert_eq!(
            out,
            r#"<noscript><meta name=referrer content="same-origin"><a href="http://shop.example/x;sgsid=T">x</a><img src=//e/i></noscript>"#
        );
        // A noscript whose content names an end of its own, or ends inside an attribute,
        // goes: a browser without scripts would read what follows inside it.
        for trick in [
            r#"<noscript><sessiongate-end-of-fragment></sessiongate-end-of-fragment><a title="</noscript><p title='"><meta name=referrer content=unsafe-url><img src=//e/x>'></noscript>"#,
            r#"<noscript><SESSIONGATE-END-0000></SESSIONGATE-END-0000><a title="</noscript><p title='"><meta name=referrer content=unsafe-url>'></noscript>"#,
            r#"<noscript><!--</noscript><p title='--><meta name=referrer content=unsafe-url>'></noscript>"#,
        ] {
            // What follows `</noscript>` stays inside an attribute for both readers.
            let out = guarded(trick);
            assert!(
                out.starts_with("<noscript></noscript>"),
                "{trick} became {out}"
            );
        }
        // A refresh inside a frame's srcdoc or a noscript is tagged, and loses someone
        // else's token.
        let out = guarded(
            r#"<iframe srcdoc="<meta http-equiv=refresh content='0;url=/a;sgsid=THEIRS'>"></iframe><noscript><meta http-equiv=refresh content="0;url=/b?sgsid=THEIRS"></noscript>"#,
        );
        assert!(!out.contains("THEIRS"), "{out}");
        assert!(out.contains("http://shop.example/a;sgsid=T"), "{out}");
        assert!(out.contains("http://shop.example/b;sgsid=T"), "{out}");
        // Nested deeper than we guard: the deepest srcdoc goes.
        fn nested(n: usize) -> String {
            match n {
                0 => "<img src=x>".to_owned(),
                _ => format!(
                    "<iframe srcdoc=\"{}\"></iframe>",
                    escape_for_attribute(&nested(n - 1))
                ),
            }
        }
        let decoded = |mut s: String| {
            for _ in 0..8 {
                s = htmlize::unescape_attribute(&s).into_owned();
            }
            s
        };
        assert_eq!(decoded(guarded(&nested(2))).matches("srcdoc").count(), 2);
        assert_eq!(
            decoded(guarded(&nested(8))).matches("srcdoc").count(),
            usize::from(MAX_NESTED_DEPTH)
        );
        // Unguarded (a cookie client's page with sibling links), the page is its own.
        let out = rewrite_in_chunks(r#"<meta name="referrer" content="unsafe-url">"#, 64);
        assert!(out.contains("unsafe-url"), "{out}");
    }

    fn through(coding: Coding, compressed: &[u8], gzip_out: bool, chunk: usize) -> Vec<u8> {
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/dir/").unwrap();
        let mut html = Html::new(tagger, None, &links(), coding, gzip_out);
        let mut out = Vec::new();
        for c in compressed.chunks(chunk) {
            out.extend_from_slice(&html.feed(c).unwrap());
        }
        out.extend_from_slice(&html.finish().unwrap());
        out
    }

    #[test]
    fn gzip_deflate_and_brotli_pages_are_decoded_rewritten_and_regzipped() {
        use std::io::Read;
        let page = PAGE.repeat(50);
        let want = rewrite_in_chunks(&page, 1 << 16);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(page.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        zl.write_all(page.as_bytes()).unwrap();
        let zl = zl.finish().unwrap();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(page.as_bytes()).unwrap();
        }
        for (coding, body) in [
            (Coding::Gzip, &gz),
            (Coding::Deflate, &zl),
            (Coding::Brotli, &br),
        ] {
            for chunk in [7, 1000] {
                let plain = through(coding, body, false, chunk);
                assert_eq!(
                    String::from_utf8(plain).unwrap(),
                    want,
                    "{coding:?} {chunk}"
                );
                let regz = through(coding, body, true, chunk);
                let mut back = String::new();
                flate2::read::GzDecoder::new(&regz[..])
                    .read_to_string(&mut back)
                    .unwrap();
                assert_eq!(back, want, "{coding:?} {chunk} regzipped");
            }
        }
        // A corrupt stream is an error, not a silently wrong page.
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/").unwrap();
        let mut html = Html::new(tagger, None, &links(), Coding::Gzip, false);
        let before = rewrite_errors();
        assert!(html.feed(b"not gzip at all, not at all").is_err());
        assert!(rewrite_errors() > before, "the failure is counted");
    }

    #[test]
    fn content_encodings_we_can_decode() {
        assert_eq!(Coding::from_header(None), Some(Coding::Identity));
        assert_eq!(Coding::from_header(Some("GZIP")), Some(Coding::Gzip));
        assert_eq!(Coding::from_header(Some("br")), Some(Coding::Brotli));
        assert_eq!(Coding::from_header(Some("zstd")), None);
    }

    #[test]
    fn only_html_in_an_ascii_compatible_charset_is_rewritten() {
        assert_eq!(html_charset("text/html"), Some(None));
        assert_eq!(
            html_charset("text/html; charset=ISO-8859-1"),
            Some(Some("ISO-8859-1".to_owned()))
        );
        assert_eq!(html_charset("text/html; charset=utf-16"), None);
        assert_eq!(html_charset("application/json"), None);
        assert_eq!(html_charset("text/plain; charset=utf-8"), None);
    }

    #[test]
    fn a_page_the_rewriter_cannot_read_to_its_end_is_cut_there() {
        let run = |tagger: Tagger, page: &[u8]| {
            let mut html = Html::new(tagger, None, &links(), Coding::Identity, false);
            let mut out = Vec::new();
            for c in page.chunks(64 * 1024) {
                match html.feed(c) {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => return (out, true),
                }
            }
            match html.finish() {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => return (out, true),
            }
            (out, false)
        };
        let tagger = || Tagger::new("sgsid", "T", "http", "shop.example", "/").unwrap();
        let huge = "x".repeat(MAX_MEMORY + 1024);
        // A tag over the memory bound, on a guarded page and on one that only scrubs; what
        // follows is never passed on unread.
        for (tagger, page) in [
            (
                tagger().guarding(),
                format!(r#"<div title="{huge}"></div><meta name=referrer content=unsafe-url>"#),
            ),
            (
                tagger().without_token(),
                format!(r#"<a title="{huge}" href="/a">a</a><a href="/b;sgsid=THEIRS">b</a>"#),
            ),
        ] {
            let (out, cut) = run(tagger, page.as_bytes());
            let out = String::from_utf8_lossy(&out);
            assert!(cut, "not cut");
            assert!(!out.contains("unsafe-url") && !out.contains("THEIRS"));
        }
        // A charset the rewriter cannot read: named in the page, by a UTF-16 mark, or one a
        // browser may guess from escape sequences in a page that names none.
        for page in [
            &b"<meta charset=iso-2022-jp><a href=/x>x</a>"[..],
            &b"<p>\x1b$B\"\x1b(B</p><a href=/x>x</a>"[..],
            &b"<meta http-equiv=content-type content='text/html; charset=ISO-2022-JP'>"[..],
            &b"\xff\xfe<\0a\0"[..],
            &b"\xfe\xff\0<\0a"[..],
        ] {
            let (out, cut) = run(tagger().without_token(), page);
            assert!(cut, "{page:?} was read: {out:?}");
        }
        // A UTF-16 name in the page is read as UTF-8 (the HTML standard), and a UTF-8 mark
        // is fine.
        for page in [
            &b"<meta charset=utf-16><a href=/x>x</a>"[..],
            &b"\xef\xbb\xbf<a href=/x>x</a>"[..],
        ] {
            let (_, cut) = run(tagger(), page);
            assert!(!cut, "{page:?} was cut");
        }
    }

    #[test]
    fn a_latin1_page_keeps_its_bytes() {
        let tagger = Tagger::new("sgsid", "T", "http", "shop.example", "/").unwrap();
        let mut html = Html::new(
            tagger,
            Some("iso-8859-1"),
            &links(),
            Coding::Identity,
            false,
        );
        let page = b"<p>caf\xe9</p><a href=\"/x\">\xe9</a>";
        let mut out = html.feed(page).unwrap().to_vec();
        out.extend_from_slice(&html.finish().unwrap());
        assert_eq!(
            out,
            b"<p>caf\xe9</p><a href=\"http://shop.example/x;sgsid=T\">\xe9</a>"
        );
    }
}
