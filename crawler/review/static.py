"""The review UI's only script and stylesheet, served as /static/review.js and .css.

They live here as text (no package data to install, no build step); the CSP allows
scripts and styles from 'self' only, so nothing is inline in the pages.
"""

from __future__ import annotations

REVIEW_JS = r"""// megane review: keyboard and unblur. j/k select, u/space unblur, o open,
// r release, c confirm, t or 1-9 pick the tag, y/n label it, ? help.
(function () {
  "use strict";
  var body = document.body;
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  var tags = (body.getAttribute("data-tags") || "").split(",").filter(Boolean);
  // The selection survives an action's reload: the same image if it is still listed,
  // else the one that took its place (the next in the queue).
  var place = "megane-review:" + location.pathname + location.search;
  var saved = (sessionStorage.getItem(place) || "0:").split(":");
  var current = cards.findIndex(function (card) { return card.dataset.sha === saved[1]; });
  if (current < 0) { current = Math.min(Number(saved[0]) || 0, cards.length - 1); }
  var tagIndex = Number(sessionStorage.getItem("megane-review:tag") || 0) % (tags.length || 1);

  function select(index) {
    if (!cards.length) { return; }
    current = Math.max(0, Math.min(index, cards.length - 1));
    cards.forEach(function (card, i) { card.classList.toggle("current", i === current); });
    sessionStorage.setItem(place, current + ":" + (cards[current].dataset.sha || ""));
    cards[current].scrollIntoView({block: "nearest"});
  }

  function showTag() {
    var label = document.getElementById("current-tag");
    if (label && tags.length) { label.textContent = tags[tagIndex]; }
    sessionStorage.setItem("megane-review:tag", String(tagIndex));
  }

  function unblur(card) {
    var link = card.querySelector("a.blurred");
    if (!link) { return; }
    var image = link.querySelector("img");
    image.src = link.getAttribute("href");
    link.classList.remove("blurred");
    link.classList.add("unblurred");
  }

  function press(selector) {
    var card = cards[current];
    var button = card && card.querySelector(selector);
    if (button) { button.click(); }
  }

  cards.forEach(function (card, i) {
    var link = card.querySelector("a.blurred");
    if (link) {
      link.addEventListener("click", function (event) {
        if (link.classList.contains("blurred")) { event.preventDefault(); unblur(card); }
      });
    }
    card.addEventListener("focusin", function () { select(i); });
  });

  document.querySelectorAll("form.delete").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm("Delete this image for good and block its near-copies?")) {
        event.preventDefault();
      }
    });
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (target && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) { return; }
    var key = event.key;
    var link;
    if (key === "j" || key === "k") {
      link = document.querySelector("a[data-key='" + key + "']");
      if (link) { location.href = link.getAttribute("href"); }
      else { select(current + (key === "j" ? 1 : -1)); }
    } else if (key === "u" || key === " ") {
      if (cards[current]) { unblur(cards[current]); }
    } else if (key === "o" || key === "Enter") {
      link = cards[current] && cards[current].querySelector("a.open");
      if (link) { location.href = link.getAttribute("href"); }
    } else if (key === "r" || key === "c") {
      press("button[data-key='" + key + "']");
    } else if (key === "t" && tags.length) {
      tagIndex = (tagIndex + 1) % tags.length; showTag();
    } else if (/^[1-9]$/.test(key) && Number(key) <= tags.length) {
      tagIndex = Number(key) - 1; showTag();
    } else if ((key === "y" || key === "n") && tags.length) {
      press("button[data-label='" + tags[tagIndex] + "=" + (key === "y" ? "yes" : "no") + "']");
    } else if (key === "?") {
      var help = document.getElementById("help");
      if (help) { help.hidden = !help.hidden; }
    } else {
      return;
    }
    event.preventDefault();
  });

  select(current);
  showTag();
}());
"""

REVIEW_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #1e1e1e; color: #ddd; }
a { color: #8cf; }
header { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; padding: .5em 1em;
         background: #2b2b2b; position: sticky; top: 0; z-index: 1; }
header nav a { margin-right: 1em; }
header form { display: flex; gap: .4em; align-items: center; }
header input { width: 4.5em; }
main { padding: 1em; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 260px; background: #2b2b2b; border: 2px solid transparent; border-radius: 6px;
        padding: 6px; }
.card.current { border-color: #fc6; }
.card img { width: 260px; height: 260px; object-fit: contain; background: #111; display: block; }
.card.wide { width: auto; max-width: 100%; }
.card.wide img { width: auto; height: auto; max-width: 100%; max-height: 80vh; }
a.blurred img { filter: blur(4px); }
.meta { font-size: 12px; word-break: break-word; margin: 4px 0; }
.actions { display: flex; flex-wrap: wrap; gap: 4px; }
.actions form { display: inline; margin: 0; }
button { background: #444; color: #eee; border: 1px solid #666; border-radius: 3px;
         padding: 2px 6px; cursor: pointer; }
button.release { background: #264; }
button.confirm { background: #642; }
button.delete { background: #611; }
.labels .yes { color: #8f8; }
.labels .no { color: #f88; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #444; padding: 2px 8px; text-align: left; }
.over { color: #fc6; font-weight: bold; }
#help { background: #333; padding: .5em 1em; }
.error { color: #f88; }
.pages a { margin-right: .5em; }
"""
