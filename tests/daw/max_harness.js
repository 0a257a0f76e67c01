// Runs sam-bridge's Max for Live device JavaScript under node, with stand-ins for what Max and Live give
// it: outlet/post, messagename, the Live Object Model (LiveAPI, on a small Live set from a scenario), and
// [udpsend]/[udpreceive] (real UDP on 127.0.0.1, encoding messages the way Max does).
// One JSON command per stdin line, one JSON answer per stdout line.
// Usage: node max_harness.js <sam_bridge_device.js> <scenario.json>
"use strict";

const fs = require("fs");
const dgram = require("dgram");
const readline = require("readline");

const [devicePath, scenarioPath] = process.argv.slice(2);
const scenario = JSON.parse(fs.readFileSync(scenarioPath, "utf8"));

// --- the Live Object Model's rules ------------------------------------------------------------------
// From Cycling '74's LOM reference (docs.cycling74.com/apiref/lom: Song, Track, ClipSlot, Clip) for Live 12:
// each property's type, whether it may be set ("read-only" there) and its documented range; each function's
// arguments. Live answers a wrong call with an error in the Max window and does nothing: so does this fake
// (into `errors`, which every test expects empty).
const BOOL = { type: "bool" };
// What Live refuses of a file given to create_audio_clip: a path that is not absolute. (Whether the file is
// there and is audio, Live checks too; the scenarios name stems the daemon reported, not files on disk.)
function clipFileProblem(path) {
  const text = String(path);
  return text.startsWith("/") || /^[A-Za-z]:[\\/]/.test(text) ? null
    : "the path " + JSON.stringify(text) + " is not absolute";
}
const PROPERTIES = {
  Song: { file_path: { type: "symbol", readOnly: true }, tempo: { type: "float", min: 20, max: 999 } },
  Track: { name: { type: "symbol" } },
  Clip: {
    name: { type: "symbol" }, file_path: { type: "symbol", readOnly: true }, is_audio_clip: { type: "bool", readOnly: true },
    warping: BOOL, looping: BOOL, muted: BOOL,
    start_marker: { type: "float" }, end_marker: { type: "float" }, loop_start: { type: "float" },
    loop_end: { type: "float" }, start_time: { type: "float", readOnly: true },
    sample_rate: { type: "float", readOnly: true },
    gain: { type: "float", min: 0, max: 1, audioOnly: true },
    pitch_coarse: { type: "int", min: -48, max: 48, audioOnly: true },
    pitch_fine: { type: "float", min: -50, max: 49, audioOnly: true },
    warp_mode: { type: "int", values: [0, 1, 2, 3, 4, 6], audioOnly: true },
    warp_markers: { type: "dict", readOnly: true, audioOnly: true },
  },
};
const FUNCTIONS = {
  Song: { create_audio_track: ["int"], begin_undo_step: [], end_undo_step: [] },
  Track: { create_audio_clip: ["symbol", "float"] },
  ClipSlot: { create_audio_clip: ["symbol"] },
  Clip: { beat_to_sample_time: ["float"], sample_to_beat_time: ["float"], add_warp_marker: ["dict"] },
};

function typeError(spec, value) {
  if (spec.type === "bool") return value === 0 || value === 1 || value === true || value === false ? null : "not 0/1";
  if (spec.type === "int" && !Number.isInteger(Number(value))) return "not an int";
  if ((spec.type === "int" || spec.type === "float") && !Number.isFinite(Number(value))) return "not a number";
  if (spec.type === "symbol" && typeof value !== "string") return "not a symbol";
  if (spec.type === "dict" && (typeof value !== "object" || value === null)) return "not a dict";
  if (spec.min !== undefined && Number(value) < spec.min) return "below " + spec.min;
  if (spec.max !== undefined && Number(value) > spec.max) return "above " + spec.max;
  if (spec.values && !spec.values.includes(Number(value))) return "not one of " + spec.values.join(", ");
  return null;
}

// --- a small Live set ------------------------------------------------------------------------------

class LiveSet {
  constructor(spec) {
    this.nextId = 1;
    this.objects = new Map();
    this.calls = [];
    this.errors = [];
    this.caps = Object.assign({ track_create_audio_clip: true, slot_create_audio_clip: true, undo_steps: true,
                                song_file_path: false }, spec.capabilities);
    this.song = this.register({ kind: "Song", tracks: [], file_path: spec.set_path || "", tempo: spec.tempo || 120 });
    this.undoSteps = 0; // what Cmd-Z would walk back: one per edit, or one per begin/end_undo_step group
    this.undoDepth = 0;
    this.view = this.register({ kind: "SongView" });
    this.observers = []; // LiveAPI objects with a callback and a property: Live's notifications
    for (const t of spec.tracks || []) this.song.tracks.push(this.makeTrack(t));
    this.detail = null;
    if (spec.detail) this.selectDetail(spec.detail);
  }

  register(obj) {
    obj.id = this.nextId++;
    this.objects.set(obj.id, obj);
    return obj;
  }

  makeTrack(t) {
    const track = this.register({ kind: "Track", name: t.name || "", type: t.type || "audio", clip_slots: [],
                                  arrangement_clips: [] });
    const slots = t.clip_slots || [null, null, null, null];
    for (const c of slots) {
      const slot = this.register({ kind: "ClipSlot", clip: null, track });
      if (c) slot.clip = this.makeClip(c, track);
      track.clip_slots.push(slot);
    }
    for (const c of t.arrangement_clips || []) track.arrangement_clips.push(this.makeClip(c, track));
    return track;
  }

  makeClip(c, track) {
    return this.register(Object.assign({
      kind: "Clip", name: "", file_path: "", is_audio_clip: 1, warping: 0, looping: 0, start_marker: 0,
      end_marker: 1, loop_start: 0, loop_end: 1, start_time: 0, sample_rate: 44100, muted: 0,
      seconds_per_beat: 0.5, gain: 0.4, pitch_coarse: 0, pitch_fine: 0, warp_mode: 0, markers: [], track,
    }, c));
  }

  selectDetail(spec) {
    if (spec.none) {
      this.detail = null;
    } else {
      const track = this.song.tracks[spec.track];
      this.detail = spec.arrangement !== undefined ? track.arrangement_clips[spec.arrangement]
        : track.clip_slots[spec.slot].clip;
    }
    this.notify(this.view, "detail_clip");
  }

  /** What Live sends an observer: [property, value...]; an object property as "id N" (0: none). */
  notify(obj, property) {
    for (const api of this.observers.filter((o) => o._obj === obj && o._property === property)) {
      api._callback.call(api, [property, ...this.observed(obj, property)]);
    }
  }

  observed(obj, property) {
    if (obj.kind === "SongView" && property === "detail_clip") return ["id", this.detail ? this.detail.id : 0];
    const value = obj[property];
    return value === undefined ? [] : [value];
  }

  pathOf(obj) {
    if (obj.kind === "Song") return "live_set";
    if (obj.kind === "SongView") return "live_set view";
    const tracks = this.song.tracks;
    if (obj.kind === "Track") return "live_set tracks " + tracks.indexOf(obj);
    if (obj.kind === "ClipSlot") return this.pathOf(obj.track) + " clip_slots " + obj.track.clip_slots.indexOf(obj);
    if (obj.kind === "Clip") {
      const slot = obj.track.clip_slots.findIndex((s) => s.clip === obj);
      if (slot >= 0) return this.pathOf(obj.track) + " clip_slots " + slot + " clip";
      return this.pathOf(obj.track) + " arrangement_clips " + obj.track.arrangement_clips.indexOf(obj);
    }
    return "";
  }

  resolve(path) {
    const words = String(path).replace(/"/g, "").trim().split(/\s+/);
    if (words[0] === "id") {
      const obj = this.objects.get(Number(words[1]));
      return obj && !obj.deleted ? obj : null;
    }
    if (words[0] !== "live_set") return null;
    let obj = this.song;
    for (let i = 1; i < words.length && obj; i++) {
      const word = words[i];
      if (word === "view" && words[i + 1] === "detail_clip") return this.detail;
      if (word === "view" && i === words.length - 1) return this.view;
      if (word === "tracks") obj = this.song.tracks[Number(words[++i])];
      else if (word === "clip_slots") obj = obj.clip_slots[Number(words[++i])];
      else if (word === "arrangement_clips") obj = obj.arrangement_clips[Number(words[++i])];
      else if (word === "clip") obj = obj.clip;
      else return null;
    }
    return obj || null;
  }

  info(obj) {
    if (!obj) return "No object";
    const functions = [];
    if (obj.kind === "Track" && this.caps.track_create_audio_clip) functions.push("create_audio_clip");
    if (obj.kind === "ClipSlot" && this.caps.slot_create_audio_clip) functions.push("create_audio_clip");
    if (obj.kind === "Song") functions.push("create_audio_track");
    if (obj.kind === "Song" && this.caps.undo_steps) functions.push("begin_undo_step", "end_undo_step");
    const properties = obj.kind === "Song" && this.caps.song_file_path ? ["property file_path str"] : [];
    return ["id " + obj.id, "type " + obj.kind, ...properties, ...functions.map((f) => "function " + f), "done"]
      .join("\n");
  }

  /** An edit Live would put on its undo history. */
  edited() {
    if (this.undoDepth === 0) this.undoSteps += 1;
  }

  property(obj, prop) {
    const spec = (PROPERTIES[obj.kind] || {})[prop];
    if (!spec || (obj.kind === "Song" && prop === "file_path" && !this.caps.song_file_path)) {
      this.errors.push("get/set: no property called " + prop + " on " + obj.kind);
      return null;
    }
    if (spec.audioOnly && !obj.is_audio_clip) {
      this.errors.push(prop + " is only valid for audio clips");
      return null;
    }
    return spec;
  }

  get(obj, prop) {
    if (obj.kind === "Clip" && prop === "warp_markers") {
      return this.property(obj, prop) ? [JSON.stringify({ warp_markers: obj.markers })] : [];
    }
    if (["Clip", "Track", "Song"].includes(obj.kind) && !this.property(obj, prop)) return [];
    const value = obj[prop];
    return value === undefined ? [] : [value];
  }

  set(obj, prop, value) {
    const spec = this.property(obj, prop);
    if (!spec) return;
    if (spec.readOnly) { this.errors.push("set: " + obj.kind + "." + prop + " is read-only"); return; }
    const wrong = typeError(spec, value);
    if (wrong) { this.errors.push("set " + obj.kind + "." + prop + " " + JSON.stringify(value) + ": " + wrong); return; }
    this.calls.push({ path: this.pathOf(obj), fn: "set", args: [prop, value] });
    obj[prop] = spec.type === "symbol" || spec.type === "dict" ? value : Number(value);
    this.edited();
  }

  call(obj, fn, args) {
    const signature = (FUNCTIONS[obj.kind] || {})[fn];
    if (!signature || (fn.endsWith("_undo_step") && !this.caps.undo_steps)) {
      this.errors.push("call: no function called " + fn + " on " + obj.kind);
      return undefined;
    }
    if (args.length !== signature.length) {
      this.errors.push("call " + fn + ": " + args.length + " arguments, expected " + signature.length);
      return undefined;
    }
    for (let i = 0; i < signature.length; i++) {
      const wrong = typeError({ type: signature[i] }, args[i]);
      if (wrong) { this.errors.push("call " + fn + " argument " + (i + 1) + ": " + wrong); return undefined; }
    }
    this.calls.push({ path: this.pathOf(obj), fn, args });
    if (fn === "begin_undo_step") { this.undoDepth += 1; if (this.undoDepth === 1) this.undoSteps += 1; return undefined; }
    if (fn === "end_undo_step") { this.undoDepth = Math.max(0, this.undoDepth - 1); return undefined; }
    if (fn === "add_warp_marker") {
      const marker = args[0];
      if (!obj.warping) { this.errors.push("add_warp_marker: the clip is not warped"); return undefined; }
      if (!Number.isFinite(marker.beat_time)) { this.errors.push("add_warp_marker: no beat_time"); return undefined; }
      obj.markers.push({ beat_time: marker.beat_time, sample_time: marker.sample_time });
      this.edited();
      return undefined;
    }
    const conversion = fn === "beat_to_sample_time" || fn === "sample_to_beat_time";
    if (conversion && !obj.warping) { // the LOM: "Raises an error if the clip is not warped."
      this.errors.push(fn + ": the clip is not warped");
      return undefined;
    }
    if (!conversion) this.edited();
    if (obj.kind === "Song" && fn === "create_audio_track") {
      // the LOM: "only valid between 0 and len(song.tracks). Using an index of -1 will add the new track at
      // the end"; any other index is an error, and nothing is made
      if (args[0] !== -1 && (args[0] < 0 || args[0] > this.song.tracks.length)) {
        this.errors.push("create_audio_track: index " + args[0] + " is out of range");
        return undefined;
      }
      const index = args[0] === -1 ? this.song.tracks.length : args[0];
      this.song.tracks.splice(index, 0, this.makeTrack({ name: "Audio", clip_slots: [null, null, null, null] }));
      return undefined;
    }
    if (obj.kind === "Track" && fn === "create_audio_clip" && this.caps.track_create_audio_clip) {
      // the LOM: "Given an absolute path to a valid audio file …, creates an audio clip … at the specified
      // position in the arrangement view. Prints an error if … the track is frozen … position is not within
      // [0., 1576800.]"
      const problem = clipFileProblem(args[0]) || (obj.frozen ? "the track is frozen" : null) ||
        (!(args[1] >= 0 && args[1] <= 1576800) ? "position " + args[1] + " is not within [0., 1576800.]" : null);
      if (problem) { this.errors.push("Track.create_audio_clip: " + problem); return undefined; }
      const clip = this.makeClip({ file_path: args[0], start_time: args[1], warping: 1,
                                   name: String(args[0]).split(/[\\/]/).pop() }, obj);
      obj.arrangement_clips.push(clip);
      obj.arrangement_clips.sort((a, b) => a.start_time - b.start_time);
      return undefined;
    }
    if (obj.kind === "ClipSlot" && fn === "create_audio_clip" && this.caps.slot_create_audio_clip) {
      // the LOM: an absolute path to a valid audio file, into an empty slot of an audio track that is not frozen
      const problem = clipFileProblem(args[0]) || (obj.clip ? "the clip slot is not empty" : null) ||
        (obj.track && obj.track.frozen ? "the track is frozen" : null);
      if (problem) { this.errors.push("ClipSlot.create_audio_clip: " + problem); return undefined; }
      obj.clip = this.makeClip({ file_path: args[0], warping: 1, name: String(args[0]).split(/[\\/]/).pop() },
                               obj.track);
      return undefined;
    }
    if (obj.kind === "Clip" && fn === "beat_to_sample_time") {
      return args[0] * obj.seconds_per_beat * obj.sample_rate;
    }
    if (obj.kind === "Clip" && fn === "sample_to_beat_time") { // samples in, beats out (the inverse)
      return args[0] / obj.sample_rate / obj.seconds_per_beat;
    }
    this.errors.push("unknown function " + fn + " on " + obj.kind);
    return undefined;
  }

  snapshot() {
    const clip = (c) => c && {
      id: c.id, name: c.name, file_path: c.file_path, start_time: c.start_time, warping: c.warping, muted: c.muted,
      gain: c.gain, pitch_coarse: c.pitch_coarse, pitch_fine: c.pitch_fine, warp_mode: c.warp_mode, markers: c.markers,
    };
    return {
      tracks: this.song.tracks.map((t) => ({
        name: t.name, arrangement_clips: t.arrangement_clips.map(clip), clip_slots: t.clip_slots.map((s) => clip(s.clip)),
      })),
      calls: this.calls,
      errors: this.errors,
      undo_steps: this.undoSteps,
    };
  }
}

const live = new LiveSet(scenario.live || {});

function LiveAPI(path) {
  if (typeof path === "function") { // new LiveAPI(callback, path)
    this._callback = path;
    path = arguments[1];
  }
  const obj = live.resolve(path);
  this._obj = obj;
  this.id = obj ? String(obj.id) : "0";
  this.unquotedpath = obj ? live.pathOf(obj) : "";
  this.path = obj ? "\"" + this.unquotedpath + "\"" : "";
  this.type = obj ? obj.kind : "";
  this.info = live.info(obj);
}
// Setting `property` on a LiveAPI made with a callback observes it: Live calls back at once with the
// current value, then at every change; "" stops observing.
Object.defineProperty(LiveAPI.prototype, "property", {
  get() { return this._property || ""; },
  set(name) {
    live.observers = live.observers.filter((o) => o !== this);
    this._property = String(name || "");
    if (!this._property || !this._callback || !this._obj) return;
    live.observers.push(this);
    live.notify(this._obj, this._property);
  },
});
LiveAPI.prototype.get = function (prop) {
  return this._obj ? live.get(this._obj, prop) : [];
};
LiveAPI.prototype.set = function (prop, value) {
  if (this._obj) live.set(this._obj, prop, value);
};
LiveAPI.prototype.call = function (fn, ...args) {
  return this._obj ? live.call(this._obj, fn, args) : undefined;
};
LiveAPI.prototype.getcount = function (child) {
  const value = this._obj && this._obj[child];
  return Array.isArray(value) ? value.length : 0;
};

// --- the device, with Max's globals stood in ---------------------------------------------------------

const outlets = [];
const posts = [];
// Max's Task (docs.cycling74.com/apiref/js/task): `new Task(function, object, ...arguments)` runs the
// function, called on `object` with those arguments, on Max's scheduler: `interval` ms apart (500 unless
// set), started by `repeat(count, initialdelay)` (count -1: until cancelled), stopped by `cancel()`;
// `running` says whether it runs. Here its runs are fired by the "tick" command, not by the clock.
const timers = [];
class Task {
  constructor(fn, object, ...args) {
    if (typeof fn !== "function") throw new Error("Task: its first argument must be a function");
    Object.assign(this, { fn, object, args, interval: 500, running: false, left: -1 });
  }

  repeat(count = -1, initialdelay = 0) {
    if (typeof this.interval !== "number" || !(this.interval > 0)) {
      throw new Error("Task.interval must be a positive number of ms");
    }
    if (typeof initialdelay !== "number" || initialdelay < 0) throw new Error("Task.repeat: initialdelay >= 0");
    Object.assign(this, { running: true, left: count });
    if (!timers.includes(this)) timers.push(this);
  }

  cancel() { this.running = false; }

  // what the "tick" command reads of a timer
  get ms() { return this.interval; }
  get stopped() { return !this.running; }
  run() {
    this.fn.apply(this.object, this.args);
    if (this.left > 0 && --this.left === 0) this.running = false;
  }
}
global.Task = Task;
let udp = null;

global.outlet = () => { throw new Error("the device must use its host's outlet"); };
global.post = (text) => posts.push(String(text));
global.LiveAPI = LiveAPI;
global.messagename = "";

const device = require(devicePath);
device.setHost({
  outlet: (n, ...args) => {
    outlets.push([n, ...args]);
    if (udp && n === 0) udp.send(args); // [udpsend 127.0.0.1 9010]
    if (udp && n === 4) udp.receiveOn(args); // [udpreceive 9011]
    if (udp && n === 5) udp.probe(args); // [udpsend 127.0.0.1 9011], the port probe
  },
  post: (text) => posts.push(String(text)),
  liveApi: (path) => new LiveAPI(path),
  now: () => 1700000000000,
  // `repeat` is the device's own (maxRepeat, on the Task above); `observe` too (maxObserve, on LiveAPI's
  // callbacks). Max's Folder is not stood in: what it does with a folder that is not there is not
  // documented, so the folder listing is node's, with the device's own answer for that case (null).
  listDir: (dir) => {
    try {
      return fs.readdirSync(dir);
    } catch (e) {
      return null;
    }
  },
});

function deliver(name, args) {
  if (typeof device.messages[name] === "function" && name !== "anything") {
    device.messages[name](...args);
  } else {
    global.messagename = name;
    device.messages.anything(...args);
  }
}

// --- OSC over UDP, as [udpsend]/[udpreceive] do it ---------------------------------------------------
// Sources: Cycling '74's reference pages for udpsend and udpreceive (docs.cycling74.com/reference/udpsend,
// /udpreceive): a Max message goes out as one OSC message (address = the message name, int → i, float →
// f, symbol → s), `host`/`port` messages retarget udpsend, `port` rebinds udpreceive (and a port in use is
// posted to the Max window, nothing else happens); and the OSC 1.0 specification for the encoding.

function pad(buffer) {
  const size = Math.ceil((buffer.length + 1) / 4) * 4;
  const out = Buffer.alloc(size);
  buffer.copy(out);
  return out;
}

function encodeMessage(address, args) {
  const types = [","];
  const parts = [];
  for (const arg of args) {
    if (typeof arg === "number" && Number.isInteger(arg)) { // Max sends a whole number as an int
      types.push("i");
      const b = Buffer.alloc(4);
      b.writeInt32BE(arg);
      parts.push(b);
    } else if (typeof arg === "number") {
      types.push("f");
      const b = Buffer.alloc(4);
      b.writeFloatBE(arg);
      parts.push(b);
    } else {
      types.push("s");
      parts.push(pad(Buffer.from(String(arg), "utf8")));
    }
  }
  return Buffer.concat([pad(Buffer.from(address, "utf8")), pad(Buffer.from(types.join(""), "utf8")), ...parts]);
}

function readString(buffer, offset) {
  const end = buffer.indexOf(0, offset);
  return [buffer.toString("utf8", offset, end), Math.ceil((end + 1) / 4) * 4];
}

function decodePacket(buffer, out) {
  const [address, afterAddress] = readString(buffer, 0);
  if (address === "#bundle") {
    let offset = 16;
    while (offset < buffer.length) {
      const size = buffer.readInt32BE(offset);
      decodePacket(buffer.subarray(offset + 4, offset + 4 + size), out);
      offset += 4 + size;
    }
    return out;
  }
  const [types, afterTypes] = readString(buffer, afterAddress);
  let offset = afterTypes;
  const args = [];
  for (const type of types.slice(1)) {
    if (type === "i") { args.push(buffer.readInt32BE(offset)); offset += 4; }
    else if (type === "f") { args.push(buffer.readFloatBE(offset)); offset += 4; }
    else if (type === "d") { args.push(buffer.readDoubleBE(offset)); offset += 8; }
    else if (type === "h") { args.push(Number(buffer.readBigInt64BE(offset))); offset += 8; }
    else if (type === "s") { const [s, next] = readString(buffer, offset); args.push(s); offset = next; }
    else if (type === "T") args.push(1);
    else if (type === "F") args.push(0);
  }
  out.push({ address, args });
  return out;
}

const received = [];
const waiters = [];

function checkWaiters() {
  for (let i = waiters.length - 1; i >= 0; i--) {
    const w = waiters[i];
    if (received.filter((m) => m.address === w.address).length >= w.count) {
      waiters.splice(i, 1);
      clearTimeout(w.timer);
      w.resolve(true);
    }
  }
}

/** [udpreceive N]: a socket on 127.0.0.1:N; its `port M` message moves it. When M is taken, Max posts
 *  an error to the Max window and the object receives nothing: so does this stand-in. */
function bindReceiver(port) {
  return new Promise((resolve) => {
    const receiver = dgram.createSocket("udp4");
    receiver.on("message", (data) => {
      for (const message of decodePacket(data, [])) {
        received.push(message);
        setImmediate(() => { // [deferlow]
          deliver(message.address, message.args);
          checkWaiters();
        });
      }
    });
    receiver.once("error", (err) => {
      posts.push("udpreceive: unable to bind to port " + port + " (" + err.code + ")");
      receiver.close();
      resolve(null);
    });
    receiver.bind(port, "127.0.0.1", () => resolve(receiver));
  });
}

/** [udpsend host port]: sends each message as OSC; `port N` and `host H` change where (Max's udpsend
 *  reference: the port and host messages). */
function makeSender(port) {
  const socket = dgram.createSocket("udp4"); // an ephemeral port, like [udpsend]
  const target = { port };
  return {
    handle(args) {
      if (args[0] === "port") { target.port = Number(args[1]); return; }
      if (args[0] === "host") return;
      if (target.port > 0) socket.send(encodeMessage(String(args[0]), args.slice(1)), target.port, "127.0.0.1");
    },
    close() { socket.close(); },
  };
}

async function connect(daemonPort, listenPort) {
  const sender = makeSender(daemonPort || 0);
  const prober = makeSender(listenPort);
  let receiver = await bindReceiver(listenPort);
  let receiverPort = listenPort;
  let rebinding = Promise.resolve();
  udp = {
    send: (args) => sender.handle(args),
    probe: (args) => { rebinding = rebinding.then(() => prober.handle(args)); }, // after a rebind finishes
    receiveOn: (args) => {
      if (args[0] !== "port" || Number(args[1]) === receiverPort) return;
      receiverPort = Number(args[1]);
      rebinding = rebinding.then(async () => {
        if (receiver) receiver.close();
        receiver = await bindReceiver(receiverPort);
      });
    },
    settled: () => rebinding,
    close: () => { sender.close(); prober.close(); if (receiver) receiver.close(); },
  };
}

// --- commands ----------------------------------------------------------------------------------------

function drain() {
  return outlets.splice(0, outlets.length);
}

const commands = {
  async msg(cmd) {
    deliver(cmd.name, cmd.args || []);
    return { outlets: drain() };
  },
  async state() {
    const d = device.getDevice();
    return {
      live: live.snapshot(), posts,
      device: { presets: d.presets, presetIndex: d.presetIndex, prompt: d.prompt, listenPort: d.listenPort,
                deactivateSource: d.deactivateSource, openTags: Object.keys(d.jobsByTag),
                openJobs: Object.keys(d.jobsById), presetsProject: d.presetsProject,
                observers: live.observers.map((o) => live.pathOf(o._obj) + " " + o._property) },
      received,
    };
  },
  async select(cmd) {
    live.selectDetail(cmd);
    return { outlets: drain() };
  },
  async delete_track(cmd) {
    const [track] = live.song.tracks.splice(cmd.index, 1);
    track.deleted = true;
    return {};
  },
  async tick(cmd) {
    // Fires every running Task once (or only those of interval `ms`): the tests' clock moves by that much.
    const due = (t) => !t.stopped && (cmd.ms === undefined || t.ms === cmd.ms);
    for (const timer of timers.filter(due)) timer.run();
    if (udp) await udp.settled();
    return { outlets: drain(), timers: timers.filter(due).length };
  },
  async settle() {
    if (udp) await udp.settled();
    await new Promise((resolve) => setTimeout(resolve, 50));
    return { outlets: drain() };
  },
  async osc_connect(cmd) {
    await connect(cmd.daemon_port, cmd.listen_port);
    return {};
  },
  async wait(cmd) {
    const found = await new Promise((resolve) => {
      const waiter = { address: cmd.address, count: cmd.count || 1, resolve };
      waiter.timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        resolve(false);
      }, (cmd.timeout || 10) * 1000);
      waiters.push(waiter);
      checkWaiters();
    });
    return { found, outlets: drain() };
  },
  async eval(cmd) {
    const fn = new Function("device", "live", cmd.code); // eslint-disable-line no-new-func
    return { value: fn(device, live) };
  },
  async close() {
    if (udp) udp.close();
    udp = null;
    return {};
  },
};

let chain = Promise.resolve();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  chain = chain.then(async () => {
    let answer;
    try {
      const cmd = JSON.parse(line);
      answer = Object.assign({ ok: true }, await commands[cmd.cmd](cmd));
    } catch (err) {
      answer = { ok: false, error: String(err && err.stack ? err.stack : err) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  });
}).on("close", () => {
  chain.then(() => {
    if (udp) udp.close();
  });
});
