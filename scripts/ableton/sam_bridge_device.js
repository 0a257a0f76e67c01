// sam-bridge Max for Live device: the logic of [js sam_bridge_device.js] in sam-bridge.maxpat.
//
// It reads the selected clip through the Live Object Model, sends /sam/separate to the sam-bridge
// daemon through [udpsend], follows the job through /sam/progress events from [udpreceive], and on
// /sam/done puts the stems on new audio tracks next to the source track (Live 12's create_audio_clip).
//
// Written in ES5 for Max's [js] object. Under node (the tests) the same file exports its functions and
// takes stand-ins for Max's outlet/post and Live's LiveAPI through setHost().
//
// Outlets: 0 OSC messages to [udpsend], 1 preset menu ([umenu]), 2 progress 0..1, 3 status text ([comment]).

autowatch = 1;
inlets = 1;
outlets = 4;

var OUT_OSC = 0;
var OUT_MENU = 1;
var OUT_PROGRESS = 2;
var OUT_STATUS = 3;

var PREFIX = "/sam";
var KEEPALIVE_MS = 5000; // while jobs are open, say again where to answer: sam-bridge may have restarted
var PROMPT_ITEM = "Describe it below \u2193";
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
    // Max's Task runs `fn` every `ms` on the scheduler until cancelled.
    var task = new Task(fn, maxGlobal);
    task.interval = ms;
    task.repeat();
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
        listenPort: 9011,
        presets: [],
        incomingPresets: [],
        presetIndex: 0, // 0: the prompt item; n: presets[n - 1]
        presetsProject: null, // the Live project whose own presets the menu lists ("" none, null not asked)
        projectByFolder: {}, // a clip file's folder -> its Live project ("" none): folder listings are slow
        selectionWatch: null,
        prompt: "",
        deactivateSource: true,
        tagCounter: 0,
        jobsByTag: {},
        jobsById: {},
        warnedClipId: null,
        version: "",
        keepalive: null
    };
}

function resetDevice() {
    stopAnnouncing();
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
    var region = clipRegion(props, function (beats) {
        return Number(first(clip.call("beat_to_sample_time", beats))) / sampleRate;
    });
    if (!(region.length > 0) || !isFinite(region.length)) {
        return { error: "Could not read where this clip starts and ends. Select it again and retry." };
    }
    var track = host.liveApi("live_set tracks " + where.trackIndex);
    return {
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
        start: region.start,
        length: region.length
    };
}

/** The /sam/separate message: source, preset or prompt, tag, project folder, start, length. Start and
 *  length go as text: [udpsend] would send numbers as OSC float32, whose 7 digits put a part 10 minutes
 *  into a file up to 1.5 samples off at 48 kHz. */
function buildSeparateMessage(clip, what, tag, projectDir) {
    return [PREFIX + "/separate", clip.filePath, what.preset || what.prompt, tag, projectDir,
        secondsText(clip.start), secondsText(clip.length)];
}

function secondsText(value) {
    return String(Math.round(value * 1e9) / 1e9); // to the nanosecond: no float noise like 1.2500000001
}

/** The project folder of the audio clip in the clip view ("" outside a Live project); null when none is. */
function selectedClipProject() {
    var clip = host.liveApi("live_set view detail_clip");
    if (!clip || !clip.id || Number(clip.id) === 0 || Number(first(clip.get("is_audio_clip"))) !== 1) { return null; }
    var filePath = first(clip.get("file_path"));
    return filePath ? clipProjectDir(String(filePath)) : null;
}

// --- messages from the patch -------------------------------------------------------------------------

/** Tell sam-bridge where [udpreceive] listens ([udpsend] sends from a random port) and subscribe there. */
function announce() {
    sendOsc([PREFIX + "/reply_to", device.listenPort]);
    sendOsc([PREFIX + "/subscribe", device.listenPort]);
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
    announce();
    device.projectByFolder = {}; // Refresh also notices a set saved into a project since
    var project = selectedClipProject();
    askPresets(project !== null ? project : (device.presetsProject || ""));
    sendOsc([PREFIX + "/ping"]);
    status("Looking for sam-bridge\u2026");
    if (!device.selectionWatch) {
        device.selectionWatch = host.observe("live_set view", "detail_clip", onSelectionChanged);
    }
}

function askPresets(projectDir) {
    device.presetsProject = projectDir;
    sendOsc(projectDir ? [PREFIX + "/presets", projectDir] : [PREFIX + "/presets"]);
}

/** A clip from another Live project (or from none) gets that project's presets in the menu. */
function onSelectionChanged() {
    var project = selectedClipProject();
    if (project !== null && project !== device.presetsProject) { askPresets(project); }
}

function bang() { init(); }
function refresh() { init(); }

function port(value) {
    var next = Math.floor(Number(value));
    if (!(next > 0 && next < 65536)) { return; }
    if (next !== device.listenPort) { sendOsc([PREFIX + "/unsubscribe", device.listenPort]); }
    device.listenPort = next;
    announce();
}

function presetindex(index) {
    device.presetIndex = Math.max(0, Math.floor(Number(index)) || 0);
    device.warnedClipId = null;
}

function text() { device.prompt = joinWords(argsArray(arguments)); }
function prompt() { device.prompt = joinWords(argsArray(arguments)); }

function deactivate(value) { device.deactivateSource = Number(value) !== 0; }

function separate() {
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
    if (clip.warped && device.warnedClipId !== clip.id) {
        device.warnedClipId = clip.id;
        status("This clip is warped: the stems come back unwarped, at the file's own tempo. "
            + "Click Separate again to go ahead.");
        return null;
    }
    device.warnedClipId = null;
    device.tagCounter += 1;
    var tag = "live-" + host.now() + "-" + device.tagCounter;
    var job = { tag: tag, clip: clip, what: what, jobId: null, stems: [], finished: false };
    device.jobsByTag[tag] = job;
    announce(); // the daemon may have restarted since
    sendOsc(buildSeparateMessage(clip, what, tag, stemsProjectDir(clip.filePath, host.listDir)));
    keepAnnouncing();
    progress(0);
    status("Sent " + clip.name + " \u00b7 " + whatLabel(what) + " to sam-bridge\u2026");
    return job;
}

function cancel() {
    var any = false;
    for (var tag in device.jobsByTag) {
        if (!device.jobsByTag.hasOwnProperty(tag)) { continue; }
        var job = device.jobsByTag[tag];
        if (job.finished) { continue; }
        any = true;
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
    if (device.selectionWatch) {
        device.selectionWatch.stop();
        device.selectionWatch = null;
    }
    sendOsc([PREFIX + "/unsubscribe", device.listenPort]);
}

// --- messages from sam-bridge ([udpreceive] -> [deferlow] -> here) -----------------------------------

var handlers = {};

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
    var message = args.length > 3 ? joinWords(args.slice(3)) : "";
    var word = STATE_WORDS[state] || state;
    progress(state === "done" ? 1 : fraction);
    var line = job.clip.name + ": " + word + " " + Math.round(fraction * 100) + "%";
    status(message ? line + " \u2014 " + message : line);
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
    status(result.text);
    if (result.files) { host.post("sam-bridge stems:\n" + result.files.join("\n")); }
};

handlers["/error"] = function (args) {
    var key = String(args[0]);
    var message = joinWords(args.slice(1));
    var job = device.jobsById[key] || device.jobsByTag[key];
    if (job) {
        finish(job);
        progress(0);
        status(job.clip.name + ": " + message);
    } else if (!key) {
        status("sam-bridge: " + message);
    }
};

handlers["/presets/list"] = function (args) {
    for (var i = 0; i < args.length; i++) { device.incomingPresets.push(String(args[i])); }
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
    status("Connected to sam-bridge" + (device.version ? " " + device.version : "") + ": "
        + device.presets.length + (device.presets.length === 1 ? " preset" : " presets")
        + (project ? " for " + project : "") + ".");
};

handlers["/pong"] = function (args) {
    device.version = String(args[0] || "");
};

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
    var song = host.liveApi("live_set");
    for (var s = 0; s < job.stems.length; s++) {
        var stem = job.stems[s];
        var index = trackIndex + 1 + s;
        song.call("create_audio_track", index);
        var track = host.liveApi("live_set tracks " + index);
        track.set("name", stemTrackName(job.clip.trackName, job.what, stem.label));
        var clip = job.clip.isArrangement ? createArrangementClip(track, index, stem.path, job.clip.startTime)
            : createSessionClip(index, slotIndex, stem.path);
        if (clip) {
            clip.set("warping", 0); // stems are the file's own time, like an unwarped source
            clip.set("name", stem.label);
        }
    }
    if (device.deactivateSource && place) { place.api.set("muted", 1); }
    return { text: "Stems of " + job.clip.name + " are on " + job.stems.length + " new tracks.", files: null };
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
        setHost: setHost, resetDevice: resetDevice, getDevice: function () { return device; },
        findLiveProject: findLiveProject, stemsProjectDir: stemsProjectDir, clipRegion: clipRegion,
        parseClipPath: parseClipPath, readSelectedClip: readSelectedClip, buildSeparateMessage: buildSeparateMessage,
        stemTrackName: stemTrackName, currentWhat: currentWhat, placeStems: placeStems, dirname: dirname,
        joinPath: joinPath, maxPath: maxPath,
        messages: {
            init: init, bang: bang, refresh: refresh, port: port, presetindex: presetindex, text: text,
            prompt: prompt, deactivate: deactivate, separate: separate, cancel: cancel,
            notifydeleted: notifydeleted, anything: anything
        }
    };
}
