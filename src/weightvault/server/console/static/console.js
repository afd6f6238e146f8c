// weightvault console: the only script (no inline script; the CSP forbids it).
// It checks an audit event's inclusion proof and the log's checkpoint signature in the browser
// with WebCrypto, so the page's verdict never rests on the server's word.
"use strict";

const enc = new TextEncoder();

function b64decode(text) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error("bad base64");
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// RFC 6962 / RFC 9162 hashes: leaves get 0x00, interior nodes 0x01.
const leafHash = (entry) => sha256(concat(new Uint8Array([0]), entry));
const nodeHash = (l, r) => sha256(concat(new Uint8Array([1]), l, r));

// RFC 9162 section 2.1.3.2: the root an inclusion proof leads to (null if the proof is malformed).
async function rootFromInclusion(index, size, leaf, proof) {
  if (!(index >= 0 && index < size)) return null;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of proof) {
    if (p.length !== 32 || sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

// A C2SP signed note: the text up to the blank line, and its signature lines.
function parseNote(note) {
  const cut = note.indexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) throw new Error("the checkpoint is not a signed note");
  const body = note.slice(0, cut + 1);
  const sigs = note.slice(cut + 2, -1).split("\n").map((line) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error("malformed signature line");
    return { name: m[1], blob: b64decode(m[2]) };
  });
  const lines = body.slice(0, -1).split("\n");
  if (lines.length < 3 || !/^[0-9]+$/.test(lines[1])) throw new Error("malformed checkpoint");
  return { body, origin: lines[0], size: Number(lines[1]), root: b64decode(lines[2]), sigs };
}

// A vkey: name+hex key id+base64(type || Ed25519 public key).
async function parseVkey(vkey) {
  // The name holds no "+", the key id is hex; the base64 key may hold "+".
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(vkey);
  if (!m) throw new Error("malformed log key");
  const parts = m.slice(1);
  const blob = b64decode(parts[2]);
  if (blob.length !== 33 || blob[0] !== 1) throw new Error("the log key is not an Ed25519 note key");
  const id = (await sha256(concat(enc.encode(parts[0] + "\n"), blob))).slice(0, 4);
  if (hex(id) !== parts[1]) throw new Error("the log key's id does not match it");
  return { name: parts[0], id, publicKey: blob.slice(1) };
}

async function verifyNote(note, key) {
  const sig = note.sigs.find((s) => s.name === key.name && s.blob.length === 68 && equal(s.blob.slice(0, 4), key.id));
  if (!sig) return false;
  const pub = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, pub, sig.blob.slice(4), enc.encode(note.body));
}

// The log key this browser trusts for this console: pinned on first use, then fixed.
function pinnedKey(vkey) {
  const slot = "weightvault.log-key." + location.host;
  const pinned = localStorage.getItem(slot);
  if (pinned === null) { localStorage.setItem(slot, vkey); return { vkey, fresh: true }; }
  return { vkey: pinned, fresh: false };
}

// result: "verified", "failed", or "pending" (the entry is newer than the published checkpoint).
function show(section, result, message, facts, entryText) {
  const status = section.querySelector("#proof-status");
  status.textContent = message;
  status.className = "status " + ({ verified: "ok", pending: "pending" }[result] || "failed");
  section.dataset.result = result;
  const dl = section.querySelector("#proof-facts");
  dl.replaceChildren();
  for (const [k, v] of facts) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  section.querySelector("#proof-entry").textContent = entryText || "";
}

async function verifyProof(section) {
  delete section.dataset.result;
  section.querySelector("#proof-status").textContent = "Checking…";
  const facts = [];
  let entryText = "";
  try {
    if (!window.crypto || !crypto.subtle) throw new Error("this page is not a secure context: serve the console over HTTPS");
    const response = await fetch(section.dataset.proofUrl, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 409) {
      // Not a failed proof: witnesses have not yet cosigned a checkpoint that covers the entry.
      const problem = await response.json().catch(() => ({}));
      show(section, "pending", "Not yet provable: " + (problem.detail || "the entry is newer than the published checkpoint"), facts, "");
      return;
    }
    if (!response.ok) throw new Error("the broker answered " + response.status);
    const doc = await response.json();
    const index = Number(section.dataset.index);
    if (doc.index !== index) throw new Error("the proof is for another entry");
    if (typeof doc.log_vkey !== "string") throw new Error("the broker did not say which key signs its log");
    const trusted = pinnedKey(doc.log_vkey);
    if (trusted.vkey !== doc.log_vkey) throw new Error("the log's key differs from the one pinned in this browser");
    const key = await parseVkey(trusted.vkey);
    const note = parseNote(doc.checkpoint);
    if (note.origin !== key.name) throw new Error("the checkpoint is from another log (" + note.origin + ")");
    facts.push(["Log", note.origin], ["Log key id", hex(key.id) + (trusted.fresh ? " (pinned in this browser now)" : " (pinned)")]);
    facts.push(["Checkpoint size", String(note.size)], ["Root hash", hex(note.root)]);
    if (!(await verifyNote(note, key))) throw new Error("the checkpoint's signature does not verify under the log key");
    const entry = b64decode(doc.entry);
    entryText = new TextDecoder("utf-8", { fatal: true }).decode(entry);
    const proof = doc.proof.map(b64decode);
    const root = await rootFromInclusion(index, note.size, await leafHash(entry), proof);
    facts.push(["Leaf hash", hex(await leafHash(entry))], ["Proof hashes", String(proof.length)]);
    if (root === null || !equal(root, note.root)) throw new Error("the inclusion proof does not lead to the checkpoint's root");
    // The page's own rendering must be of the entry just proven.
    const event = JSON.parse(entryText);
    entryText = JSON.stringify(event, null, 2);
    const shownType = document.getElementById("event-type");
    const shownResource = document.getElementById("event-resource");
    if ((shownType && shownType.textContent !== event.type) || (shownResource && shownResource.textContent !== (event.resource || ""))) {
      throw new Error("the page shows other fields than the proven entry");
    }
    const witnesses = note.sigs.filter((s) => s.name !== key.name).length;
    facts.push(["Other signatures (witnesses)", String(witnesses) + ", not checked here: weightvault audit verify checks them"]);
    show(section, "verified", "Verified: entry " + index + " is in the log of " + note.size + " entries, under a checkpoint the log key signed.", facts, entryText);
  } catch (error) {
    show(section, "failed", "Failed: " + error.message, facts, entryText);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("proof");
  if (section) {
    const button = section.querySelector("#verify");
    button.addEventListener("click", () => verifyProof(section));
    verifyProof(section);
  }
});
