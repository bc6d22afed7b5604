/**
 * An assistant reply rendered as markdown, safely: marked turns it into HTML, DOMPurify removes
 * anything executable (scripts, event handlers, javascript: links), highlight.js colours code
 * blocks, and each code block gets a Copy button.
 *
 * Why so strict: a reply is computed by other people's machines, so it is untrusted input.
 * Images are shown as links rather than loaded, so a reply cannot make the browser fetch a URL
 * (which would tell its owner who read it, and when); forms and inline styles are dropped too.
 */
import { useLayoutEffect, useMemo, useRef } from "react";
import DOMPurify from "dompurify";
import { Marked, type Tokens } from "marked";
import hljs from "highlight.js/lib/common";

const COPIED_MS = 1500;

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const marked = new Marked({
  gfm: true,
  breaks: true, // chat models write single newlines meaning line breaks
  renderer: {
    code({ text, lang }: Tokens.Code): string {
      const language = (lang ?? "").match(/^[\w+#.-]+/)?.[0] ?? "";
      let html: string;
      if (language && hljs.getLanguage(language)) {
        html = hljs.highlight(text, { language, ignoreIllegals: true }).value;
      } else if (!language) {
        html = hljs.highlightAuto(text).value;
      } else {
        html = escapeHtml(text);
      }
      const cls = language ? ` language-${escapeHtml(language)}` : "";
      return `<pre><code class="hljs${cls}">${html}</code></pre>\n`;
    },
    image({ href, text }: Tokens.Image): string {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || "image")}</a>`;
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** The reply's markdown as sanitized HTML. */
export function renderMarkdown(markdown: string): string {
  const html = marked.parse(markdown, { async: false });
  return DOMPurify.sanitize(html, {
    FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "svg", "math"],
    FORBID_ATTR: ["style"],
  });
}

/** navigator.clipboard exists only in secure contexts; a LAN gateway on plain http falls back. */
async function copyText(text: string): Promise<void> {
  if (navigator.clipboard?.writeText) return navigator.clipboard.writeText(text);
  const area = document.createElement("textarea");
  area.value = text;
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy refused");
}

/** Puts a Copy button in every code block of `root` that has none yet. */
function addCopyButtons(root: HTMLElement) {
  root.querySelectorAll("pre").forEach((pre) => {
    if (pre.querySelector(":scope > .copy-code")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.dataset.testid = "copy-code";
    button.textContent = "Copy";
    button.addEventListener("click", () => {
      const code = pre.querySelector("code")?.textContent ?? "";
      copyText(code).then(
        () => { button.textContent = "Copied"; },
        () => { button.textContent = "Copy failed"; },
      ).finally(() => window.setTimeout(() => { button.textContent = "Copy"; }, COPIED_MS));
    });
    pre.appendChild(button);
  });
}

export function Markdown({ text }: { text: string }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  const ref = useRef<HTMLDivElement>(null);
  // React replaces the whole inner HTML when `html` changes, buttons included: add them again.
  useLayoutEffect(() => {
    if (ref.current) addCopyButtons(ref.current);
  }, [html]);
  return <div ref={ref} className="markdown" dangerouslySetInnerHTML={{ __html: html }} />;
}
