//! The report page: one HTML file with every figure inline (base64 PNG), so it opens anywhere
//! without a network or the PNG files beside it.

use std::fmt::Write;

use base64::Engine as _;

use super::{Figure, ReportJob};
use crate::manifest::Manifest;
use crate::metrics::ClusterScores;

/// The page's file name in the output directory.
pub const REPORT_FILE: &str = "report.html";

/// One row of the clusters table.
pub(crate) struct ClusterRow {
    pub size: u64,
    pub reference_size: u64,
    /// The most frequent label and its count.
    pub majority: Option<(i64, u64)>,
}

pub(crate) struct Page<'a> {
    pub job: &'a ReportJob,
    pub manifest: &'a Manifest,
    pub rows: u64,
    pub reference_rows: Option<u64>,
    pub clusters: &'a [ClusterRow],
    pub scores: Option<&'a ClusterScores>,
    pub figures: &'a [Figure],
    /// The encoded PNG of each figure, in the same order.
    pub pngs: &'a [Vec<u8>],
    pub notes: &'a [String],
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;\
color:#222}h1{margin-bottom:0}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}\
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}\
figcaption{max-width:720px;font-size:.9em;color:#555}.note{color:#8a5a00}\
img{image-rendering:pixelated}";

/// Sets `data-figures`, `data-loaded` and `data-blank` on <body> once the page has loaded:
/// how many figures there are, how many decoded, and how many are a single colour. Headless
/// browser tests read them.
const CHECK: &str = "window.addEventListener('load',()=>{const im=[...document.images];\
let loaded=0,blank=0;for(const i of im){if(!(i.complete&&i.naturalWidth>0))continue;loaded++;\
const c=document.createElement('canvas');c.width=i.naturalWidth;c.height=i.naturalHeight;\
const x=c.getContext('2d');x.drawImage(i,0,0);const d=x.getImageData(0,0,c.width,c.height).data;\
let same=true;for(let p=4;p<d.length;p+=4){if(d[p]!==d[0]||d[p+1]!==d[1]||d[p+2]!==d[2])\
{same=false;break}}if(same)blank++}const b=document.body.dataset;b.figures=im.length;\
b.loaded=loaded;b.blank=blank;});";

impl Page<'_> {
    fn figure(&self, out: &mut String, prefix: &str) {
        for (figure, png) in self.figures.iter().zip(self.pngs) {
            if !figure.file.starts_with(prefix) {
                continue;
            }
            let data = base64::engine::general_purpose::STANDARD.encode(png);
            let _ = writeln!(
                out,
                "<figure id=\"{file}\"><img alt=\"{file}\" width=\"{w}\" height=\"{h}\" \
                 src=\"data:image/png;base64,{data}\"><figcaption>{caption} \
                 (<code>{file}</code>)</figcaption></figure>",
                file = escape(&figure.file),
                w = figure.image.width(),
                h = figure.image.height(),
                caption = escape(&figure.caption),
            );
        }
    }

    pub fn render(&self) -> String {
        let m = self.manifest;
        let mut out = String::new();
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>salient report: {name}</title><style>{STYLE}</style></head><body>\n\
             <h1>salient report</h1>\n<p>Model <code>{name}</code> ({method}, {k} clusters, \
             {d}-dimensional salient embedding, id <code>{id}</code>) on <code>{input}</code>: \
             {rows} rows.",
            name = escape(&m.name),
            method = escape(&m.method),
            k = m.k,
            d = m.d,
            id = escape(&m.id.chars().take(16).collect::<String>()),
            input = escape(&self.job.input),
            rows = self.rows,
        );
        if let (Some(reference), Some(rows)) = (&self.job.reference, self.reference_rows) {
            let _ = write!(
                out,
                " Reference <code>{}</code>: {rows} rows.",
                escape(reference)
            );
        }
        out.push_str("</p>\n");
        for note in self.notes {
            let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(note));
        }

        if let Some(s) = self.scores {
            let _ = write!(
                out,
                "<h2>Scores</h2>\n<table><tr><th>ACC</th><th>NMI</th><th>ARI</th>\
                 <th>labelled rows</th></tr><tr><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td>\
                 <td>{}</td></tr></table>\n",
                s.acc, s.nmi, s.ari, s.n
            );
        }
        if self.scores.is_some() || self.figures.iter().any(|f| f.file == "compare.png") {
            if self.scores.is_none() {
                out.push_str("<h2>Scores</h2>\n");
            }
            self.figure(&mut out, "confusion");
            self.figure(&mut out, "compare");
        }

        out.push_str(
            "<h2>Clusters</h2>\n<table><tr><th>cluster</th><th>rows</th><th>share</th>\
             <th>majority label (share)</th><th>reference rows</th></tr>\n",
        );
        for (c, row) in self.clusters.iter().enumerate() {
            let majority = row.majority.map_or_else(
                || "–".to_string(),
                |(label, n)| {
                    format!(
                        "{label} ({:.0} %)",
                        100.0 * n as f64 / row.size.max(1) as f64
                    )
                },
            );
            let reference = self
                .reference_rows
                .map_or_else(|| "–".to_string(), |_| row.reference_size.to_string());
            let _ = writeln!(
                out,
                "<tr><td>{c}</td><td>{}</td><td>{:.1} %</td><td>{majority}</td>\
                 <td>{reference}</td></tr>",
                row.size,
                100.0 * row.size as f64 / self.rows.max(1) as f64,
            );
        }
        out.push_str("</table>\n");
        self.figure(&mut out, "montage_");

        out.push_str("<h2>Maps</h2>\n");
        self.figure(&mut out, "map_");
        if self.figures.iter().any(|f| f.file == "distances.png") {
            out.push_str("<h2>Reference check</h2>\n");
            self.figure(&mut out, "distances");
        }
        if self.figures.iter().any(|f| f.file == "training.png") {
            out.push_str("<h2>Training</h2>\n");
            self.figure(&mut out, "training");
        }
        let _ = write!(out, "<script>{CHECK}</script>\n</body></html>\n");
        out
    }
}
