//! Class 1 as a property: attribute values generated from the pieces an attacker spells URLs
//! with (every named and numeric reference of `/`, `:`, `\`, tab and newline; C0 controls;
//! scheme case; scheme-relative, userinfo, IPv6 and IPv4 hosts, ports) go through the
//! rewriter, and each decision is checked against an independent reading: html5ever's
//! tokenizer decodes the attribute as a browser does, then the `url` crate (WHATWG) resolves
//! it. The rewriter itself decodes with another implementation.

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use proptest::prelude::*;
use sessiongate::rewrite::{Coding, Html, Tagger};

use super::rewriter::{HOME, judge, page_of_links};

/// One attribute of a start tag, decoded as a browser decodes it.
#[derive(Debug, Clone)]
pub struct Attr {
    pub element: String,
    pub name: String,
    pub value: String,
    /// Inside `<template>`, `<svg>` or `<math>` (whose `<base>` is not the document's).
    pub hidden: bool,
}

#[derive(Default)]
struct Sink {
    attrs: RefCell<Vec<Attr>>,
    /// Open `<template>`, `<svg>` and `<math>` elements.
    hidden: RefCell<Vec<String>>,
    /// Read as a browser without scripts: a `<noscript>`'s content is markup.
    no_scripts: bool,
}

impl TokenSink for Sink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let Token::TagToken(tag) = token else {
            return TokenSinkResult::Continue;
        };
        let name = tag.name.to_string();
        let mut hidden = self.hidden.borrow_mut();
        if tag.kind == TagKind::EndTag {
            if hidden.last() == Some(&name) {
                hidden.pop();
            }
            return TokenSinkResult::Continue;
        }
        for a in &tag.attrs {
            self.attrs.borrow_mut().push(Attr {
                element: name.clone(),
                name: a.name.local.to_string(),
                value: a.value.to_string(),
                hidden: !hidden.is_empty(),
            });
        }
        if matches!(name.as_str(), "template" | "svg" | "math") && !tag.self_closing {
            hidden.push(name.clone());
        }
        // What a browser with scripting on reads as text, not markup.
        match name.as_str() {
            "script" => TokenSinkResult::RawData(RawKind::ScriptData),
            "noscript" if self.no_scripts => TokenSinkResult::Continue,
            "style" | "iframe" | "noscript" | "xmp" | "noembed" | "noframes" => {
                TokenSinkResult::RawData(RawKind::Rawtext)
            }
            "textarea" | "title" => TokenSinkResult::RawData(RawKind::Rcdata),
            _ => TokenSinkResult::Continue,
        }
    }
}

/// Every attribute of every start tag in `html`, in order, as a browser decodes it.
pub fn browser_attributes(html: &str) -> Vec<Attr> {
    tokenize(html, false)
}

fn tokenize(html: &str, no_scripts: bool) -> Vec<Attr> {
    let sink = Sink {
        no_scripts,
        ..Sink::default()
    };
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tokenizer.sink.attrs.take()
}

/// Every attribute in `html` and in the documents inside it (each frame's `srcdoc`, read in
/// turn, however deep), as a browser with scripts (or without: `no_scripts`, where a
/// `<noscript>`'s content is markup) reads them.
pub fn attributes_of_every_document(html: &str, no_scripts: bool) -> Vec<Attr> {
    let mut all = Vec::new();
    let mut documents = vec![html.to_owned()];
    // Bounded: a page cannot nest more documents than it has bytes.
    while let Some(doc) = documents.pop() {
        for a in tokenize(&doc, no_scripts) {
            if a.element == "iframe" && a.name == "srcdoc" {
                documents.push(a.value.clone());
            }
            all.push(a);
        }
    }
    all
}

/// The base URL a browser uses for `html` served at `page_url`: the first `<base href>` in
/// the document's own HTML (not in a template or foreign content), wherever it stands.
pub fn honoured_base(html: &str, page_url: &str) -> url::Url {
    let page = url::Url::parse(page_url).unwrap();
    browser_attributes(html)
        .into_iter()
        .find(|a| a.element == "base" && a.name == "href" && !a.hidden)
        .and_then(|a| page.join(&a.value).ok())
        .unwrap_or(page)
}

/// The pieces hostile URLs are made of.
const PIECES: &[&str] = &[
    // schemes, in several cases
    "http",
    "HTTP",
    "https",
    "hTtPs",
    "javascript",
    "JaVaScRiPt",
    "data",
    "mailto",
    "ftp",
    "ws",
    "file",
    "blob",
    "view-source",
    // `:`
    ":",
    "&colon;",
    "&#58;",
    "&#x3a;",
    "&#X3A;",
    "&#0058;",
    "&#58",
    "&colon",
    // `/` and `\`
    "/",
    "//",
    "\\",
    "&sol;",
    "&#47;",
    "&#x2f;",
    "&#X2F",
    "&#00047;",
    "&bsol;",
    "&#92;",
    "&#x5c;",
    "&#x5C",
    "&Backslash;",
    // tab, newline, C0, spaces
    "\t",
    "\n",
    "\r",
    "&Tab;",
    "&NewLine;",
    "&#9;",
    "&#10;",
    "&#13;",
    "&#x0D;",
    " ",
    "&#32;",
    "&#1;",
    "&#0;",
    "&#x1f;",
    "&nbsp;",
    "\u{1}",
    "\u{c}",
    "&#127;",
    "&#x80;",
    "&#xD800;",
    "&#x110000;",
    // hosts
    "shop.example",
    "SHOP.EXAMPLE",
    "other.example",
    "shop.example.other.example",
    "shop.example:80",
    "shop.example:8080",
    "[::1]",
    "127.0.0.1",
    "0x7f.0.0.1",
    "user@other.example",
    "shop.example@other.example",
    "other.example@shop.example",
    "other.example&#64;shop.example",
    "xn--shp-qla.example",
    "shop%2Eexample",
    "%73hop.example",
    // paths, queries, fragments, and text that looks like references
    "x",
    "/x",
    "..",
    ".",
    "%2e%2e",
    "?q=1",
    "?",
    "#frag",
    "#",
    "&amp;",
    "&",
    "=",
    ";sgsid=OLD",
    "&quot;",
    "'",
    "&lt;",
    "&gt;",
    "é",
    "&eacute;",
    "&amp;copy;",
    "&copy",
    "&copy;",
    "&copy=",
    "&nope;",
    "&#",
    "&#x;",
    "@",
    "%",
    "%41",
];

fn hostile_value() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(PIECES), 1..9).prop_map(|p| p.concat())
}

/// Rewrites `page` (served at `HOME` + `target`) as the gateway does for a URL-tracked
/// client holding `token`, in chunks of `chunk` bytes.
fn rewrite(page: &str, target: &str, token: &str, chunk: usize) -> String {
    let tagger = Tagger::new("sgsid", token, "http", "shop.example", target).unwrap();
    let links = vec![
        ("a".to_owned(), "href".to_owned()),
        ("form".to_owned(), "action".to_owned()),
    ];
    let mut html = Html::new(tagger, None, &links, Coding::Identity, false);
    let mut out = Vec::new();
    for c in page.as_bytes().chunks(chunk.max(1)) {
        out.extend_from_slice(&html.feed(c).unwrap());
    }
    out.extend_from_slice(&html.finish().unwrap());
    String::from_utf8(out).unwrap()
}

const TOKEN: &str = "TOKEN0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW";

/// How many generated pages a run judges: 3,000 in CI; `SG_CORPUS_CASES` asks for more.
fn cases() -> u32 {
    std::env::var("SG_CORPUS_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_generated_link_is_tagged_exactly_when_a_browser_would_stay_on_the_origin(
        values in proptest::collection::vec(hostile_value(), 1..6),
        chunk in 1usize..64,
    ) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let page = page_of_links(&refs);
        let out = rewrite(&page, "/dir/page", TOKEN, chunk);
        if let Err(e) = judge(&page, &out, &format!("{HOME}/dir/page"), TOKEN) {
            return Err(TestCaseError::fail(format!("{e}\npage: {page}\nout: {out}")));
        }
    }
}

#[test]
fn the_fixed_hostile_table_is_judged_alike_in_process() {
    let page = page_of_links(super::rewriter::HOSTILE_LINKS);
    for chunk in [1, 3, 7, 4096] {
        let out = rewrite(&page, "/links", TOKEN, chunk);
        judge(&page, &out, &format!("{HOME}/links"), TOKEN)
            .unwrap_or_else(|e| panic!("{e}\n{out}"));
    }
}
