// sam-bridge Max for Live device: the logic of [js sam_bridge_device.js] in sam-bridge.maxpat.
//
// It reads the selected clip through the Live Object Model, sends /sam/separate to the sam-bridge
// daemon through [udpsend], follows the job through /sam/progress events from [udpreceive], and on
// /sam/done puts the stems on new audio tracks next to the source track (Live 12's create_audio_clip),
// an audition's at the window of the clip it covers (/sam/part).
//
// Written in ES5 for Max's [js] object. Under node (the tests) the same file exports its functions and
// takes stand-ins for Max's outlet/post and Live's LiveAPI through setHost().
//
// Outlets: 0 OSC messages (and `port N`) to [udpsend], 1 preset menu ([umenu]), 2 progress 0..1, 3 status
// text ([comment]), 4 `port N` to [udpreceive], 5 the port probe's own [udpsend] (to our reply port),
// 6 `text <label>` to the Separate button ([live.text]: "Confirm $1.50" while a costly job waits).
//
// Know before you pay: Separate and Audition first send /sam/estimate (same arguments, nothing is sent to
// the service); /sam/estimate/ok says the cost, and above sam-bridge's confirm_above the Separate button
// turns into "Confirm $x.xx" for a few seconds: only a click on it sends /sam/separate.

autowatch = 1;
inlets = 1;
outlets = 7;

var OUT_OSC = 0;
var OUT_MENU = 1;
var OUT_PROGRESS = 2;
var OUT_STATUS = 3;
var OUT_RECEIVE = 4;
var OUT_PROBE = 5;
var OUT_SEPARATE_LABEL = 6;

var PREFIX = "/sam";
var DEFAULT_SEND_PORT = 9010; // sam-bridge's OSC port (its config: osc.port)
var DEFAULT_REPLY_PORT = 9011;
var PING_MS = 1000; // sam-bridge is asked every second whether it is there
var DOWN_AFTER_PINGS = 2; // unanswered pings before the device says it is not running (2 s)
var PROBE_MS = 500; // how long a port probe may take to come back before the next port is tried
var PORT_TRIES = 20; // reply ports tried: the chosen one and the next 19
var START_HINT = "start it with  sam-bridge run  in a terminal (or once:  sam-bridge service install)";
var KEEPALIVE_MS = 5000; // while jobs are open, say again where to answer: sam-bridge may have restarted
var PROMPT_ITEM = "Describe it below \u2193";
var SEPARATE_LABEL = "Separate";
var CONFIRM_MS = 8000; // how long "Confirm $x.xx" waits for its click before the job is dropped
var AUDITION_SECONDS = 10; // the Audition button: only this much of the clip is separated
var STEMS_SUBFOLDER = ["Samples", "Processed"]; // + the daemon's "Stems": Live 12.3's own place for stems
var STATE_WORDS = {
    queued: "queued", waiting: "waiting", preparing: "preparing", uploading: "uploading",
    submitted: "sent", running: "separating", downloading: "downloading", conforming: "lining up",
    done: "done", failed: "failed", cancelled: "cancelled"
};

// --- the host: Max and Live, or the tests' stand-ins ------------------------------------------------

var maxGlobal = this; // Max's [js] object: outlet() and post() are its methods

var host = {
    outlet: function () { outlet.apply(maxGlobal, arguments); },
    post: function (text) { post(text + "\n"); },
    liveApi: function (path) { return new LiveAPI(path); },
    now: function () { return new Date().getTime(); },
    listDir: maxListDir,
    repeat: maxRepeat,
    observe: maxObserve
};

function maxRepeat(ms, fn) {
    // Max's Task runs `fn` every `ms` on the scheduler until cancelled (a negative count). Its first run
    // comes after `initialdelay`, which is given: without it the first run may come at once, and a timeout
    // (the port probe, the cost confirmation) would fire before anything could answer.
    var task = new Task(fn, maxGlobal);
    task.interval = ms;
    task.repeat(-1, ms);
    return { stop: function () { task.cancel(); } };
}

function maxObserve(path, property, fn) {
    // LiveAPI calls back now and at every change of `property` (Live's notifications: reading is fine
    // there, changing the set is not). Kept referenced by the closure, so it is not collected.
    var api = new LiveAPI(function () { fn(); }, path);
    api.property = property;
    return { stop: function () { api.property = ""; } };
}

/** Max's own path syntax: forward slashes ("C:/Users/…"); Live gives Windows paths with backslashes. */
function maxPath(path) {
    return String(path).replace(/\\/g, "/");
}

function maxListDir(dir) {
    // Max's Folder lists a folder's files and subfolders; null when the folder cannot be read.
    var names = [];
    try {
        var folder = new Folder(maxPath(dir));
        folder.typelist = [];
        while (!folder.end) {
            if (folder.filename) { names.push(folder.filename); }
            folder.next();
        }
        folder.close();
    } catch (e) {
        return null;
    }
    return names;
}

function setHost(replacements) {
    for (var key in replacements) {
        if (replacements.hasOwnProperty(key)) { host[key] = replacements[key]; }
    }
}

// --- state -------------------------------------------------------------------------------------------

var device = newDeviceState();

function newDeviceState() {
    return {
        listenPort: DEFAULT_REPLY_PORT, // where [udpreceive] listens (announced with /sam/reply_to)
        wantedPort: DEFAULT_REPLY_PORT, // the "reply port" box; the next free one is taken when it is in use
        sendPort: DEFAULT_SEND_PORT, // the "sam-bridge port" box: where [udpsend] sends
        probe: null, // {nonce, port, tries, timer}: finding out whether the reply port is ours
        portConfirmed: false,
        watchdog: null,
        unanswered: 0, // pings since the last /sam/pong
        daemonUp: null, // null: not known yet
        health: "ok", // /sam/pong's health word: ok, or what is wrong (journal-damaged, …)
        songProject: undefined, // the Live Set's own project folder (undefined: not asked yet)
        presets: [],
        incomingPresets: [],
        presetIndex: 0, // 0: the prompt item; n: presets[n - 1]
        presetsProject: null, // the Live project whose own presets the menu lists ("" none, null not asked)
        presetsRefused: "", // why sam-bridge did not read that project's own presets (/sam/presets/refused)
        projectByFolder: {}, // a clip file's folder -> its Live project ("" none): folder listings are slow
        selectionWatch: null,
        prompt: "",
        deactivateSource: true,
        tagCounter: 0,
        jobsByTag: {},
        jobsById: {},
        warnedClipId: null,
        version: "",
        keepalive: null,
        confirming: null, // the job whose cost waits for "Confirm $x.xx"
        confirmTimer: null
    };
}

function resetDevice() {
    stopAnnouncing();
    stopTimer("watchdog");
    stopTimer("confirmTimer");
    if (device.probe && device.probe.timer) { device.probe.timer.stop(); }
    if (device.selectionWatch) { device.selectionWatch.stop(); }
    device = newDeviceState();
}

// --- small helpers -----------------------------------------------------------------------------------

function first(value) {
    // LiveAPI.get returns arrays; a missing property comes back empty or undefined.
    if (value === undefined || value === null) { return undefined; }
    if (value instanceof Array) { return value.length ? value[0] : undefined; }
    return value;
}

function argsArray(args) {
    return Array.prototype.slice.call(args);
}

function joinWords(args) {
    var words = [];
    for (var i = 0; i < args.length; i++) { words.push(String(args[i])); }
    return words.join(" ");
}

function sendOsc(parts) {
    host.outlet.apply(null, [OUT_OSC].concat(parts));
}

function stopTimer(name) {
    if (device[name]) {
        device[name].stop();
        device[name] = null;
    }
}

function status(text) {
    host.outlet(OUT_STATUS, "set", text);
}

function progress(fraction) {
    host.outlet(OUT_PROGRESS, Math.max(0, Math.min(1, fraction)));
}

function shorten(text, limit) {
    // Counts characters, not UTF-16 halves, so an emoji is never cut in two.
    var chars = text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]|[\s\S]/g) || [];
    return chars.length > limit ? chars.slice(0, limit - 1).join("") + "\u2026" : text;
}

function pathSeparator(path) {
    return path.indexOf("\\") >= 0 && path.indexOf("/") < 0 ? "\\" : "/";
}

function dirname(path) {
    var cut = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
    if (cut < 0) { return ""; }
    if (cut === 0) { return path.substring(0, 1); }
    if (cut === 2 && path.charAt(1) === ":") { return path.substring(0, 3); }
    return path.substring(0, cut);
}

function joinPath(dir, parts) {
    var sep = pathSeparator(dir);
    var out = dir;
    for (var i = 0; i < parts.length; i++) {
        var last = out.charAt(out.length - 1);
        out += (last === "/" || last === "\\" ? "" : sep) + parts[i];
    }
    return out;
}

function basename(path) {
    var cut = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
    return path.substring(cut + 1);
}

// --- what to separate --------------------------------------------------------------------------------

function whatLabel(what) {
    return what.preset ? what.preset : "\"" + shorten(what.prompt.replace(/\s+/g, " "), 32) + "\"";
}

/** "<track> · <preset> (<stem>)", the same names the REAPER script gives. */
function stemTrackName(trackName, what, label) {
    return trackName + " \u00b7 " + whatLabel(what) + " (" + label + ")";
}

/** The preset chosen in the menu, else the typed prompt; null when neither. */
function currentWhat() {
    if (device.presetIndex > 0 && device.presetIndex <= device.presets.length) {
        return { preset: device.presets[device.presetIndex - 1] };
    }
    var prompt = device.prompt.replace(/^\s+|\s+$/g, "");
    return prompt ? { prompt: prompt } : null;
}

/** The Live project folder holding `filePath` (the folder with "Ableton Project Info" or a .als), or "". */
function findLiveProject(filePath, listDir) {
    var dir = dirname(filePath);
    for (var depth = 0; depth < 8 && dir; depth++) {
        var names = listDir(dir);
        if (names) {
            for (var i = 0; i < names.length; i++) {
                if (names[i] === "Ableton Project Info" || /\.als$/i.test(names[i])) { return dir; }
            }
        }
        var parent = dirname(dir);
        if (parent === dir) { break; }
        dir = parent;
    }
    return "";
}

/** Where the daemon should put the stems: `<project>/Samples/Processed` (+ "Stems"), or "" for beside the source.
 *  It is also the project the daemon reads the Live Set's own presets for (from `<project>/sam-bridge/presets`). */
function stemsProjectDir(filePath, listDir) {
    var project = findLiveProject(filePath, listDir);
    return project ? joinPath(project, STEMS_SUBFOLDER) : "";
}

/** stemsProjectDir for the clip's file, remembered per folder: it runs at every change of selection. */
function clipProjectDir(filePath) {
    var folder = dirname(filePath);
    if (!device.projectByFolder.hasOwnProperty(folder)) {
        device.projectByFolder[folder] = stemsProjectDir(filePath, host.listDir);
    }
    return device.projectByFolder[folder];
}

// --- the selected clip -------------------------------------------------------------------------------

function parseClipPath(path) {
    var text = String(path || "").replace(/"/g, "");
    var track = /tracks (\d+)/.exec(text);
    var slot = /clip_slots (\d+)/.exec(text);
    var arrangement = /arrangement_clips (\d+)/.exec(text);
    return {
        path: text,
        trackIndex: track ? parseInt(track[1], 10) : -1,
        slotIndex: slot ? parseInt(slot[1], 10) : -1,
        isArrangement: !!arrangement
    };
}

/** The part of the clip's file that plays, in seconds. A looping clip plays from its start marker to the
 *  loop end (then loops); for one that does not loop, the LOM's loop_start and loop_end are the clip's
 *  start and end (its end_marker need not be). */
function clipRegion(props, beatsToSeconds) {
    var start = props.looping ? props.startMarker : props.loopStart;
    var end = props.loopEnd;
    if (!(end > start)) { end = props.endMarker; }
    if (props.warped) {
        start = beatsToSeconds(start);
        end = beatsToSeconds(end);
    }
    start = Math.max(0, start);
    return { start: start, length: end - start };
}

/** The clip in Live's clip view, with what a separation needs; {error: text} when there is none. */
function readSelectedClip() {
    var clip = host.liveApi("live_set view detail_clip");
    if (!clip || !clip.id || Number(clip.id) === 0) {
        return { error: "Select an audio clip first (click it so it shows in the clip view)." };
    }
    if (Number(first(clip.get("is_audio_clip"))) !== 1) {
        return { error: "That is a MIDI clip: select an audio clip." };
    }
    var filePath = first(clip.get("file_path"));
    if (!filePath) {
        return { error: "This clip has no audio file on disk yet: save or freeze first, then try again." };
    }
    var where = parseClipPath(clip.unquotedpath || clip.path);
    if (where.trackIndex < 0) {
        return { error: "Could not tell which track the clip is on. Select it again and retry." };
    }
    var props = {
        warped: Number(first(clip.get("warping"))) === 1,
        looping: Number(first(clip.get("looping"))) === 1,
        startMarker: Number(first(clip.get("start_marker"))),
        loopStart: Number(first(clip.get("loop_start"))),
        endMarker: Number(first(clip.get("end_marker"))),
        loopEnd: Number(first(clip.get("loop_end")))
    };
    var sampleRate = Number(first(clip.get("sample_rate"))) || 0;
    var startBeats = props.looping ? props.startMarker : props.loopStart; // where clipRegion's start is, in beats
    var region = clipRegion(props, function (beats) {
        return Number(first(clip.call("beat_to_sample_time", beats))) / sampleRate;
    });
    if (!(region.length > 0) || !isFinite(region.length)) {
        return { error: "Could not read where this clip starts and ends. Select it again and retry." };
    }
    var track = host.liveApi("live_set tracks " + where.trackIndex);
    var settings = {
        gain: Number(first(clip.get("gain"))),
        pitch_coarse: Number(first(clip.get("pitch_coarse"))),
        pitch_fine: Number(first(clip.get("pitch_fine"))),
        warp_mode: Number(first(clip.get("warp_mode"))),
        warping: props.warped ? 1 : 0,
        markers: props.warped ? warpMarkers(clip) : []
    };
    return {
        settings: settings,
        id: Number(clip.id),
        path: where.path,
        name: String(first(clip.get("name")) || basename(filePath)),
        filePath: String(filePath),
        trackIndex: where.trackIndex,
        trackName: String(first(track.get("name")) || ("Track " + (where.trackIndex + 1))),
        slotIndex: where.slotIndex,
        isArrangement: where.isArrangement,
        startTime: Number(first(clip.get("start_time"))) || 0,
        warped: props.warped,
        startBeats: props.warped ? startBeats : null,
        sampleRate: sampleRate,
        start: region.start,
        length: region.length
    };
}

/** The clip's warp markers ({beat_time, sample_time} in beats and seconds). The LOM gives the read-only
 *  `warp_markers` property as a dict, which Max hands [js] as JSON text. */
function warpMarkers(clip) {
    var raw = clip.get("warp_markers");
    var text = raw instanceof Array ? raw.join(" ") : String(raw || "");
    try {
        var parsed = JSON.parse(text);
        var list = parsed && parsed.warp_markers ? parsed.warp_markers : parsed;
        return list instanceof Array ? list : [];
    } catch (e) {
        return [];
    }
}

/** The /sam/separate message: source, preset or prompt, tag, project folder, start, length (and the
 *  audition's seconds). Start and length go as text: [udpsend] would send numbers as OSC float32, whose
 *  7 digits put a part 10 minutes into a file up to 1.5 samples off at 48 kHz. `address`: "/estimate"
 *  asks what the same request would cost. */
function buildSeparateMessage(clip, what, tag, projectDir, audition, address) {
    var message = [PREFIX + (address || "/separate"), clip.filePath, what.preset || what.prompt, tag, projectDir,
        secondsText(clip.start), secondsText(clip.length)];
    if (audition) { message.push(audition); }
    return message;
}

/** "$0.05" (USD) or "0.05 EUR". */
function money(amount, currency) {
    var text = (Math.round(Number(amount) * 100) / 100).toFixed(2);
    return !currency || currency === "USD" ? "$" + text : text + " " + currency;
}

// The notes of a sam-bridge from before /sam/flag (0.2.0), which says nothing of them: the stems are right.
var NOTES_OF_OLDER_DAEMONS = ["audition", "drift-corrected", "span-cut-at-end"];

/** The warnings among the job's flags, in sam-bridge's words from /sam/flag ("" when none). A note (the stems
 *  are right, e.g. an audition's) is left out; a flag sam-bridge sent no words for shows as its code. */
function flagsText(flags, about) {
    var words = [];
    for (var i = 0; i < (flags || []).length; i++) {
        var said = (about || {})[flags[i]];
        if (said && said.note) { continue; }
        if (!said && NOTES_OF_OLDER_DAEMONS.indexOf(flags[i]) >= 0) { continue; }
        var text = said && said.words ? said.words : flags[i];
        if (words.indexOf(text) < 0) { words.push(text); }
    }
    return words.length ? "check: " + words.join("; ") : "";
}

function etaText(eta) {
    if (!(eta >= 0)) { return ""; }
    return eta < 60 ? "about " + Math.ceil(eta) + " s left" : "about " + Math.ceil(eta / 60) + " min left";
}

function secondsText(value) {
    return String(Math.round(value * 1e9) / 1e9); // to the nanosecond: no float noise like 1.2500000001
}

/** The project folder of the audio clip in the clip view ("" outside a Live project); null when none is. */
function selectedClipProject() {
    var clip = host.liveApi("live_set view detail_clip");
    if (!clip || !clip.id || Number(clip.id) === 0 || Number(first(clip.get("is_audio_clip"))) !== 1) { return null; }
    var filePath = first(clip.get("file_path"));
    return filePath ? projectFor(String(filePath)) : null;
}

function hasProperty(api, name) {
    return String(api.info || "").indexOf("property " + name + " ") >= 0;
}

/** The saved Live Set's project (`<project>/Samples/Processed`), when the LOM tells where the set is: Song
 *  has a `file_path` property on the Live versions that have it (it is listed by `info`). "" for an unsaved
 *  set; null when this Live does not say. */
function songProjectDir() {
    if (device.songProject === undefined) {
        var song = host.liveApi("live_set");
        device.songProject = null;
        if (song && hasProperty(song, "file_path")) {
            var setPath = String(first(song.get("file_path")) || "");
            device.songProject = setPath ? stemsProjectDir(setPath, host.listDir) : "";
        }
    }
    return device.songProject;
}

/** The project a clip belongs to: the Live Set's own when the LOM gives it (an uncollected sample from
 *  another project must not bring that project's presets or receive our stems); else the project around the
 *  clip's file (the fallback on a Live whose LOM does not tell the set's path). */
function projectFor(filePath) {
    var fromSong = songProjectDir();
    return fromSong ? fromSong : clipProjectDir(filePath);
}

// --- messages from the patch -------------------------------------------------------------------------

/** Tell sam-bridge where [udpreceive] listens ([udpsend] sends from a random port) and subscribe there. */
function announce() {
    sendOsc([PREFIX + "/reply_to", device.listenPort]);
    sendOsc([PREFIX + "/subscribe", device.listenPort]);
}

// --- the reply port: ours, or the next free one ------------------------------------------------------
// [udpreceive] cannot tell the patch that its port is taken (a second sam-bridge device, another program):
// it only posts to the Max window. So the device sends itself a probe with a nonce through its own
// [udpsend] to the reply port; if the probe comes back, the port is ours; if not within PROBE_MS, the
// next port is tried and, once one answers, announced with /sam/reply_to.

function listenOn(port) {
    device.listenPort = port;
    device.portConfirmed = false;
    host.outlet(OUT_RECEIVE, "port", port);
    if (device.probe && device.probe.timer) { device.probe.timer.stop(); }
    var nonce = "probe-" + host.now() + "-" + Math.floor(Math.random() * 1e9);
    device.probe = { nonce: nonce, port: port, tries: device.probe ? device.probe.tries : 0, timer: null };
    host.outlet(OUT_PROBE, "port", port);
    host.outlet(OUT_PROBE, PREFIX + "/probe", nonce);
    device.probe.timer = host.repeat(PROBE_MS, probeTimedOut);
}

function probeTimedOut() {
    var probe = device.probe;
    if (!probe || device.portConfirmed) { return; }
    probe.timer.stop();
    probe.tries += 1;
    if (probe.tries >= PORT_TRIES) {
        device.probe = null;
        status("No free reply port between " + device.wantedPort + " and " + (device.wantedPort + PORT_TRIES - 1)
            + ": close what uses them, or type another port in the device's \"reply port\" box.");
        return;
    }
    var next = device.wantedPort + probe.tries;
    host.post("sam-bridge: reply port " + probe.port + " is in use; trying " + next);
    listenOn(next > 65535 ? 1024 + (next - 65536) : next);
}

function onProbe(args) {
    var probe = device.probe;
    if (!probe || String(args[0]) !== probe.nonce) { return; } // another device instance's probe
    probe.timer.stop();
    device.probe = null;
    device.portConfirmed = true;
    if (device.listenPort !== device.wantedPort) {
        status("Reply port " + device.wantedPort + " is in use: listening on " + device.listenPort + " instead.");
    }
    announce();
}

// --- is sam-bridge there? --------------------------------------------------------------------------

function startWatchdog() {
    if (!device.watchdog) { device.watchdog = host.repeat(PING_MS, watchdogTick); }
}

/** Every second: a ping; after DOWN_AFTER_PINGS unanswered ones, say so (and keep asking). Between a first
 *  miss and the verdict the device announces again: a restarted sam-bridge has forgotten the reply port. */
function watchdogTick() {
    if (device.unanswered >= DOWN_AFTER_PINGS && device.daemonUp !== false) {
        device.daemonUp = false;
        status("sam-bridge isn't running \u2014 " + START_HINT + ". Retrying\u2026");
    }
    if (device.unanswered >= 1) { announce(); }
    ping();
}

function ping() {
    device.unanswered += 1;
    sendOsc([PREFIX + "/ping"]);
}

/** Announce again every few seconds while a job is open, so events reach us after a daemon restart
 *  (jobs resume there; the subscription and reply port do not survive it; a job that ended in between
 *  is sent to us when we subscribe afresh). */
function keepAnnouncing() {
    if (device.keepalive) { return; }
    device.keepalive = host.repeat(KEEPALIVE_MS, function () {
        if (openJobCount() === 0) {
            stopAnnouncing();
        } else {
            announce();
        }
    });
}

function stopAnnouncing() {
    if (device.keepalive) {
        device.keepalive.stop();
        device.keepalive = null;
    }
}

function openJobCount() {
    var count = 0;
    for (var tag in device.jobsByTag) {
        if (device.jobsByTag.hasOwnProperty(tag) && !device.jobsByTag[tag].finished) { count += 1; }
    }
    return count;
}

/** [live.thisdevice] and the refresh button: say where to answer, subscribe, ask for the presets (the
 *  selected clip's project's own too), and from then on follow the selection to another project. */
function init() {
    if (!device.portConfirmed && !device.probe) { listenOn(device.wantedPort); }
    announce();
    device.projectByFolder = {}; // Refresh also notices a set saved into a project since
    device.songProject = undefined;
    var project = selectedClipProject();
    askPresets(project !== null ? project : (device.presetsProject || ""));
    ping();
    status(device.daemonUp === false ? "sam-bridge isn't running \u2014 " + START_HINT + ". Retrying\u2026"
        : "Looking for sam-bridge\u2026");
    startWatchdog();
    if (!device.selectionWatch) {
        device.selectionWatch = host.observe("live_set view", "detail_clip", onSelectionChanged);
    }
}

function askPresets(projectDir) {
    device.presetsProject = projectDir;
    device.presetsRefused = "";
    sendOsc(projectDir ? [PREFIX + "/presets", projectDir] : [PREFIX + "/presets"]);
}

/** A clip from another Live project (or from none) gets that project's presets in the menu. */
function onSelectionChanged() {
    var project = selectedClipProject();
    if (project !== null && project !== device.presetsProject) { askPresets(project); }
}

function bang() { init(); }
function refresh() { init(); }

/** The "reply port" box: where to listen (the next free port is taken when it is in use). */
function port(value) {
    var next = Math.floor(Number(value));
    if (!(next > 0 && next < 65536)) { return; }
    if (next !== device.listenPort && device.portConfirmed) {
        sendOsc([PREFIX + "/unsubscribe", device.listenPort]); // only our own subscription, never another's
    }
    device.wantedPort = next;
    if (device.probe) { device.probe.tries = 0; }
    listenOn(next);
    announce();
}

/** The "sam-bridge port" box: where sam-bridge listens (its config's osc.port). */
function sendport(value) {
    var next = Math.floor(Number(value));
    if (!(next > 0 && next < 65536) || next === device.sendPort) { return; }
    device.sendPort = next;
    sendOsc(["port", next]); // [udpsend]'s own message: send there from now on
    device.unanswered = 0;
    announce();
    ping();
}

function presetindex(index) {
    device.presetIndex = Math.max(0, Math.floor(Number(index)) || 0);
    device.warnedClipId = null;
}

function text() { device.prompt = joinWords(argsArray(arguments)); }
function prompt() { device.prompt = joinWords(argsArray(arguments)); }

function deactivate(value) { device.deactivateSource = Number(value) !== 0; }

/** The Separate button: asks what the selected clip would cost (/sam/estimate); a click while it shows
 *  "Confirm $x.xx" sends the job waiting for it. */
function separate() {
    if (device.confirming) { return send(endConfirm()); }
    return ask(0);
}

/** The Audition button (not automatable, like Separate): the same, for only AUDITION_SECONDS of the clip.
 *  sam-bridge separates the loudest window that long inside the clip's part and says where it is (/sam/part):
 *  the stems are placed at that window's place in the clip (stemRegion). */
function audition() {
    if (device.confirming) { dropConfirm("Not sent: " + device.confirming.clip.name + " waited for its confirmation."); }
    return ask(AUDITION_SECONDS);
}

function ask(auditionSeconds) {
    var what = currentWhat();
    if (!what) {
        status("Pick a preset, or choose \"" + PROMPT_ITEM + "\" and type what to isolate.");
        return null;
    }
    var clip = readSelectedClip();
    if (clip.error) {
        status(clip.error);
        return null;
    }
    device.tagCounter += 1;
    var tag = "live-" + host.now() + "-" + device.tagCounter;
    var job = { tag: tag, clip: clip, what: what, jobId: null, stems: [], flags: [], flagWords: {}, finished: false,
        audition: auditionSeconds, estimating: true };
    device.jobsByTag[tag] = job;
    announce(); // the daemon may have restarted since
    job.projectDir = projectFor(clip.filePath);
    sendOsc(buildSeparateMessage(clip, what, tag, job.projectDir, auditionSeconds, "/estimate"));
    status("Asking sam-bridge what " + (auditionSeconds ? "an audition of " : "") + clip.name + " \u00b7 "
        + whatLabel(what) + " would cost\u2026");
    return job;
}

/** The job whose cost the user agreed to (or that needs no asking) goes to sam-bridge. */
function send(job) {
    if (!job) { return null; }
    job.estimating = false;
    sendOsc(buildSeparateMessage(job.clip, job.what, job.tag, job.projectDir, job.audition));
    keepAnnouncing();
    progress(0);
    status("Sent " + (job.audition ? "an audition of " : "") + job.clip.name + " \u00b7 " + whatLabel(job.what)
        + " to sam-bridge" + (job.costText ? " (" + job.costText + ")" : "") + "\u2026");
    return job;
}

function endConfirm() {
    var job = device.confirming;
    device.confirming = null;
    stopTimer("confirmTimer");
    host.outlet(OUT_SEPARATE_LABEL, "text", SEPARATE_LABEL);
    return job;
}

function dropConfirm(text) {
    var job = endConfirm();
    if (job) { finish(job); }
    status(text);
}


function cancel() {
    var any = false;
    for (var tag in device.jobsByTag) {
        if (!device.jobsByTag.hasOwnProperty(tag)) { continue; }
        var job = device.jobsByTag[tag];
        if (job.finished) { continue; }
        any = true;
        if (job === device.confirming) { endConfirm(); }
        if (job.jobId) {
            sendOsc([PREFIX + "/cancel", job.jobId]);
        } else {
            finish(job); // never accepted: nothing to cancel at the daemon
        }
    }
    status(any ? "Cancelling\u2026" : "Nothing to cancel.");
}

function notifydeleted() {
    stopAnnouncing();
    stopTimer("watchdog");
    if (device.probe && device.probe.timer) { device.probe.timer.stop(); }
    if (device.selectionWatch) {
        device.selectionWatch.stop();
        device.selectionWatch = null;
    }
    sendOsc([PREFIX + "/unsubscribe", device.listenPort]);
}

// --- messages from sam-bridge ([udpreceive] -> [deferlow] -> here) -----------------------------------

var handlers = {};

handlers["/estimate/ok"] = function (args) {
    var job = device.jobsByTag[String(args[0])];
    if (!job || !job.estimating || job.finished) { return; }
    var cost = Number(args[3]);
    var currency = String(args[4] || "USD");
    var wholeCost = Number(args[7]);
    job.costText = "about " + money(cost, currency) + (wholeCost >= 0 ? "; the whole clip: " + money(wholeCost, currency)
        : "");
    if (Number(args[6]) !== 1) { return send(job); }
    if (device.confirming) { dropConfirm(""); }
    device.confirming = job;
    host.outlet(OUT_SEPARATE_LABEL, "text", "Confirm " + money(cost, currency));
    status(job.clip.name + " \u00b7 " + whatLabel(job.what) + " would cost " + job.costText
        + ", more than " + money(Number(args[5]), currency) + ": click Confirm within " + CONFIRM_MS / 1000
        + " s to send it.");
    device.confirmTimer = host.repeat(CONFIRM_MS, function () {
        if (device.confirming === job) { dropConfirm("Not sent: " + job.clip.name + " was not confirmed."); }
    });
};

handlers["/accepted"] = function (args) {
    var job = device.jobsByTag[String(args[0])];
    if (!job) { return; }
    job.jobId = String(args[1]);
    device.jobsById[job.jobId] = job;
    status(job.clip.name + ": queued");
};

handlers["/progress"] = function (args) {
    var job = device.jobsById[String(args[0])];
    if (!job || job.finished) { return; } // another client's job (we subscribe to all events)
    var state = String(args[1]);
    var fraction = Number(args[2]) || 0;
    var message = args.length > 3 ? String(args[3]) : "";
    var eta = args.length > 4 ? etaText(Number(args[4])) : ""; // -1: not known yet
    var word = STATE_WORDS[state] || state;
    progress(state === "done" ? 1 : fraction);
    var line = job.clip.name + ": " + word + " " + Math.round(fraction * 100) + "%" + (eta ? ", " + eta : "");
    status(message ? line + " \u2014 " + message : line);
};

handlers["/flags"] = function (args) {
    var job = device.jobsById[String(args[0])];
    if (job) { job.flags = job.flags.concat(args.slice(1).map(String)); }
};

// One per flag, after /sam/flags: sam-bridge's words for it, and whether it is only a note (declared once, in
// the daemon: bridge/common/flags.py).
handlers["/flag"] = function (args) {
    var job = device.jobsById[String(args[0])];
    if (job) {
        job.flagWords[String(args[1])] = { note: String(args[2]) === "note", words: joinWords(args.slice(3)) };
    }
};

// Where in the source the stems begin and how long they are (an audition: the loudest window of the clip's
// part, which the daemon chose), from the manifest's `part`: before /sam/stem and /sam/done.
handlers["/part"] = function (args) {
    var job = device.jobsById[String(args[0])];
    var start = Number(args[1]), length = Number(args[2]);
    if (job && isFinite(start) && start >= 0 && isFinite(length) && length > 0) {
        job.part = { start: start, length: length };
    }
};

handlers["/stem"] = function (args) {
    var job = device.jobsById[String(args[0])];
    if (job) { job.stems.push({ label: String(args[1]), path: joinWords(args.slice(2)) }); }
};

handlers["/done"] = function (args) {
    var job = device.jobsById[String(args[0])];
    if (!job || job.finished) { return; }
    if (!job.stems.length) {
        job.stems = [{ label: "target", path: String(args[1]) }, { label: "residual", path: String(args[2]) }];
    }
    finish(job);
    progress(1);
    var result = placeStems(job);
    var warnings = flagsText(job.flags, job.flagWords);
    status(warnings ? result.text + " \u2014 " + warnings : result.text);
    if (result.files) { host.post("sam-bridge stems:\n" + result.files.join("\n")); }
};

/** The exact fix when sam-bridge may not read the clip's file or write into its project. */
function allowHint(job, message) {
    if (message.indexOf("outside the folders sam-bridge may") < 0) { return ""; }
    var folder = job.projectDir ? dirname(dirname(job.projectDir)) : dirname(job.clip.filePath);
    return " To allow it, run in a terminal:  sam-bridge allow \"" + folder + "\"  then restart sam-bridge.";
}

handlers["/error"] = function (args) {
    var key = String(args[0]);
    var message = joinWords(args.slice(1));
    var job = device.jobsById[key] || device.jobsByTag[key];
    if (job) {
        finish(job);
        progress(0);
        var hint = allowHint(job, message);
        status(job.clip.name + ": " + (hint ? "sam-bridge may not use this project's folder." + hint : message));
        if (hint) { host.post("sam-bridge: " + message); }
    } else if (!key) {
        status("sam-bridge: " + message);
    }
};

handlers["/presets/list"] = function (args) {
    for (var i = 0; i < args.length; i++) { device.incomingPresets.push(String(args[i])); }
};

// Before /sam/presets/end when sam-bridge may not use the project asked for: the list holds the shared presets
// only, and this says why (with the command that allows the project).
handlers["/presets/refused"] = function (args) {
    device.presetsRefused = joinWords(args.slice(1));
};

handlers["/presets/end"] = function () {
    var chosen = device.presetIndex > 0 ? device.presets[device.presetIndex - 1] : null;
    device.presets = device.incomingPresets;
    device.incomingPresets = [];
    device.presetIndex = 0;
    host.outlet(OUT_MENU, "clear");
    host.outlet(OUT_MENU, "append", PROMPT_ITEM);
    for (var i = 0; i < device.presets.length; i++) {
        host.outlet(OUT_MENU, "append", device.presets[i]);
        if (device.presets[i] === chosen) { device.presetIndex = i + 1; }
    }
    host.outlet(OUT_MENU, "set", device.presetIndex);
    var project = device.presetsProject ? basename(dirname(dirname(device.presetsProject))) : "";
    var refused = device.presetsRefused;
    device.presetsRefused = "";
    var count = device.presets.length + (device.presets.length === 1 ? " preset" : " presets");
    var connected = healthText() ? healthText() + " " : "Connected to sam-bridge"
        + (device.version ? " " + device.version : "") + ": ";
    if (refused) {
        status(connected + count + ", the shared ones only \u2014 " + (project ? project + ": " : "") + refused
            + (refused.indexOf("sam-bridge allow") >= 0 ? ", then restart sam-bridge." : ""));
        host.post("sam-bridge: " + refused);
        return;
    }
    status(connected + count + (project ? " for " + project : "") + ".");
};

/** What is wrong with sam-bridge, in its own health words ("journal-damaged" -> "journal damaged"), or ""
 *  when it is well. */
function healthText() {
    if (device.health === "ok") { return ""; }
    return "sam-bridge" + (device.version ? " " + device.version : "") + " is running but not well: "
        + device.health.replace(/-/g, " ") + " (its log says more).";
}

handlers["/pong"] = function (args) {
    device.version = String(args[0] || "");
    device.unanswered = 0;
    var wasDown = device.daemonUp === false;
    device.daemonUp = true;
    var health = args.length > 1 && String(args[1]) ? String(args[1]) : "ok"; // an older sam-bridge sends none
    var previous = device.health;
    device.health = health;
    if (wasDown) { // it is back: say so, and take up where we were (presets, subscription)
        status(healthText() || "sam-bridge is back" + (device.version ? " (" + device.version + ")" : "") + ".");
        announce();
        askPresets(device.presetsProject || "");
    } else if (health !== previous) { // said when it changes: in between, the status line follows the jobs
        status(healthText() || "sam-bridge" + (device.version ? " " + device.version : "") + " is well again.");
    }
};

handlers["/probe"] = onProbe;

function finish(job) {
    job.finished = true;
    delete device.jobsByTag[job.tag];
    if (job.jobId) { delete device.jobsById[job.jobId]; }
    if (openJobCount() === 0) { stopAnnouncing(); }
}

/** Max calls anything() for messages without their own function: the OSC replies, and the prompt's
 *  text when [textedit] sends it without its "text" selector. */
function anything() {
    var address = String(messagename);
    var args = argsArray(arguments);
    if (address.charAt(0) !== "/") {
        device.prompt = joinWords([address].concat(args));
        return;
    }
    if (address.indexOf(PREFIX + "/") !== 0) { return; }
    var handler = handlers[address.substring(PREFIX.length)];
    if (handler) { handler(args); }
}

// --- stems onto new tracks ---------------------------------------------------------------------------

function hasFunction(api, name) {
    return String(api.info || "").indexOf("function " + name) >= 0;
}

/** The source clip's current place (tracks may have moved since the request); null if it is gone. */
function currentClipPlace(job) {
    var clip = host.liveApi("id " + job.clip.id);
    if (!clip || Number(clip.id) === 0) { return null; }
    var where = parseClipPath(clip.unquotedpath || clip.path);
    return where.trackIndex >= 0 ? { api: clip, trackIndex: where.trackIndex, slotIndex: where.slotIndex } : null;
}

/** The stretch of the source the stem files hold: the clip's part, or an audition's window of it (from
 *  /sam/part; a daemon that does not send it auditioned from the part's start). */
function stemRegion(job) {
    if (job.audition && job.part) { return job.part; }
    return { start: job.clip.start, length: job.clip.length };
}

/** Beats from the clip's start in the arrangement to `seconds` into its file: through the clip's warping
 *  (Clip.sample_to_beat_time, in samples) when it is warped, else at the song's tempo (an unwarped clip
 *  plays its file at its own speed). */
function beatsIntoClip(job, place, seconds) {
    var offset = seconds - job.clip.start;
    if (Math.abs(offset) < 1e-9) { return 0; }
    if (job.clip.warped && place && job.clip.sampleRate > 0) {
        var beat = Number(first(place.api.call("sample_to_beat_time", seconds * job.clip.sampleRate)));
        if (isFinite(beat)) { return beat - job.clip.startBeats; }
    }
    var tempo = Number(first(host.liveApi("live_set").get("tempo"))) || 120;
    return offset * tempo / 60;
}

/** Creates one audio track per stem right after the source track and places the stems like the clip. */
function placeStems(job) {
    var files = [];
    for (var i = 0; i < job.stems.length; i++) { files.push(job.stems[i].path); }
    var place = currentClipPlace(job);
    var trackIndex = place ? place.trackIndex : job.clip.trackIndex;
    var slotIndex = place ? place.slotIndex : job.clip.slotIndex;
    var probe = job.clip.isArrangement ? host.liveApi("live_set tracks " + trackIndex)
        : host.liveApi("live_set tracks " + trackIndex + " clip_slots " + Math.max(slotIndex, 0));
    if (!probe || Number(probe.id) === 0 || !hasFunction(probe, "create_audio_clip")) {
        return {
            text: "Stems ready in " + dirname(files[0]) + " (this Live cannot place them itself: drag them in; "
                + "Live 12 places them for you). Paths are in the Max window.",
            files: files
        };
    }
    var region = stemRegion(job);
    var startTime = job.clip.startTime + (job.clip.isArrangement ? beatsIntoClip(job, place, region.start) : 0);
    var song = host.liveApi("live_set");
    // One undo step for all of it where the LOM offers Song.begin_undo_step/end_undo_step (Live 12); else
    // Live records each edit (Cmd/Ctrl-Z then takes several presses).
    var grouped = hasFunction(song, "begin_undo_step") && hasFunction(song, "end_undo_step");
    if (grouped) { song.call("begin_undo_step"); }
    try {
        for (var s = 0; s < job.stems.length; s++) {
            var stem = job.stems[s];
            var index = trackIndex + 1 + s;
            song.call("create_audio_track", index);
            var track = host.liveApi("live_set tracks " + index);
            track.set("name", stemTrackName(job.clip.trackName, job.what, (job.audition ? "audition " : "") + stem.label));
            var clip = job.clip.isArrangement ? createArrangementClip(track, index, stem.path, startTime)
                : createSessionClip(index, slotIndex, stem.path);
            if (clip) {
                applyClipSettings(clip, job.clip, region);
                clip.set("name", stem.label);
            }
        }
        if (device.deactivateSource && place && !job.audition) { place.api.set("muted", 1); } // a trial keeps it
    } finally {
        if (grouped) { song.call("end_undo_step"); }
    }
    return { text: "Stems of " + job.clip.name + " are on " + job.stems.length + " new tracks.", files: null };
}

/** The source clip's gain, pitch and warping on a stem clip, so it sounds and stays in time like the source.
 *  The stem file starts where the separated region starts (region.start seconds into the source's file), so
 *  each warp marker keeps its beat and moves by that much in the file; markers outside the stem are left. */
function applyClipSettings(stemClip, source, region) {
    var settings = source.settings;
    if (!settings) { return; }
    if (isFinite(settings.gain)) { stemClip.set("gain", settings.gain); }
    if (isFinite(settings.pitch_coarse)) { stemClip.set("pitch_coarse", Math.round(settings.pitch_coarse)); }
    if (isFinite(settings.pitch_fine)) { stemClip.set("pitch_fine", settings.pitch_fine); }
    stemClip.set("warping", settings.warping);
    if (!settings.warping) { return; }
    if (isFinite(settings.warp_mode)) { stemClip.set("warp_mode", Math.round(settings.warp_mode)); }
    for (var i = 0; i < settings.markers.length; i++) {
        var marker = settings.markers[i];
        var at = Number(marker.sample_time) - region.start;
        if (at >= 0 && at <= region.length + 1e-9) {
            stemClip.call("add_warp_marker", { beat_time: Number(marker.beat_time), sample_time: at });
        }
    }
}

function createArrangementClip(track, trackIndex, path, startTime) {
    track.call("create_audio_clip", path, startTime);
    var count = Number(track.getcount("arrangement_clips")) || 0;
    for (var i = 0; i < count; i++) {
        var clip = host.liveApi("live_set tracks " + trackIndex + " arrangement_clips " + i);
        if (Math.abs(Number(first(clip.get("start_time"))) - startTime) < 1e-6) { return clip; }
    }
    return null;
}

function createSessionClip(trackIndex, slotIndex, path) {
    var slotPath = "live_set tracks " + trackIndex + " clip_slots " + Math.max(slotIndex, 0);
    host.liveApi(slotPath).call("create_audio_clip", path);
    var clip = host.liveApi(slotPath + " clip");
    return clip && Number(clip.id) !== 0 ? clip : null;
}

// --- node (the tests) --------------------------------------------------------------------------------

if (typeof module !== "undefined" && module.exports) {
    module.exports = {
        setHost: setHost, resetDevice: resetDevice, getDevice: function () { return device; }, maxRepeat: maxRepeat,
        findLiveProject: findLiveProject, stemsProjectDir: stemsProjectDir, clipRegion: clipRegion,
        parseClipPath: parseClipPath, readSelectedClip: readSelectedClip, buildSeparateMessage: buildSeparateMessage,
        stemTrackName: stemTrackName, currentWhat: currentWhat, placeStems: placeStems, dirname: dirname,
        joinPath: joinPath, maxPath: maxPath, money: money, flagsText: flagsText,
        messages: {
            init: init, bang: bang, refresh: refresh, port: port, sendport: sendport, presetindex: presetindex,
            text: text,
            prompt: prompt, deactivate: deactivate, separate: separate, audition: audition, cancel: cancel,
            notifydeleted: notifydeleted, anything: anything
        }
    };
}
