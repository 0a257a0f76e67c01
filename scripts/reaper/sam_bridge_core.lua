-- @noindex
-- sam-bridge for REAPER: the pure logic (no `reaper.*` calls), so it runs and is tested under plain Lua.
-- Paths, state-folder discovery, item -> request, render settings; JSON (sam_bridge_json) and what the
-- user reads (sam_bridge_text: menu, status, names) are added to this table from their own files.
-- Written for Lua 5.3 and 5.4 (REAPER 6 and 7).

local M = {}

M.VERSION = "0.2.2"
M.EXT_SECTION = "sam-bridge"

for name, value in pairs(require("sam_bridge_json")) do M[name] = value end

---------------------------------------------------------------------------------------------------
-- Paths
---------------------------------------------------------------------------------------------------

--- "windows", "macos" or "linux" from REAPER's GetOS() ("Win64", "OSX64", "macOS-arm64", "linux-x86_64", "Other").
function M.platform(os_name)
  os_name = os_name or ""
  if os_name:find("^Win") then return "windows" end
  if os_name:find("^OSX") or os_name:find("^macOS") then return "macos" end
  return "linux"
end

local function separator_for(path)
  if path:find("\\", 1, true) and not path:find("/", 1, true) then return "\\" end
  return "/"
end

--- Joins path parts with the separator the first part already uses.
function M.join(first, ...)
  local sep = separator_for(first)
  local path = first
  for _, part in ipairs({ ... }) do
    if path:sub(-1) == "/" or path:sub(-1) == "\\" then
      path = path .. part
    else
      path = path .. sep .. part
    end
  end
  return path
end

function M.dirname(path)
  local dir = path:match("^(.*)[/\\][^/\\]*$")
  if dir == nil then return "" end
  if dir == "" then return path:sub(1, 1) end -- "/file" -> "/"
  if dir:match("^%a:$") then return dir .. path:sub(#dir + 1, #dir + 1) end -- "C:\file" -> "C:\"
  return dir
end

function M.basename(path)
  return path:match("([^/\\]*)$")
end

--- File extension in lower case without the dot ("" when none).
function M.extension(path)
  return (M.basename(path):match("%.([^.]+)$") or ""):lower()
end

--- File name without its extension.
function M.stem(path)
  local name = M.basename(path)
  return name:match("^(.+)%.[^.]+$") or name
end

function M.is_absolute(path)
  return path:sub(1, 1) == "/" or path:match("^%a:[/\\]") ~= nil or path:sub(1, 2) == "\\\\"
end

---------------------------------------------------------------------------------------------------
-- State folder (where the daemon writes daemon.json and presets.json)
---------------------------------------------------------------------------------------------------

local function nonempty(value)
  if value and value:match("%S") then return value end
  return nil
end

--- Folders to look in for daemon.json, most specific first (mirrors platformdirs' user_state_dir).
function M.state_dir_candidates(platform, getenv)
  local candidates = {}
  local function add(path)
    if path then
      for _, existing in ipairs(candidates) do
        if existing == path then return end
      end
      candidates[#candidates + 1] = path
    end
  end
  add(nonempty(getenv("SAM_BRIDGE_STATE_DIR")))
  if platform == "windows" then
    local local_app_data = nonempty(getenv("LOCALAPPDATA"))
    if not local_app_data and nonempty(getenv("USERPROFILE")) then
      local_app_data = M.join(getenv("USERPROFILE"), "AppData", "Local")
    end
    if local_app_data then add(M.join(local_app_data, "sam-bridge")) end
    return candidates
  end
  local home = nonempty(getenv("HOME"))
  local xdg_state = nonempty(getenv("XDG_STATE_HOME"))
  if xdg_state and xdg_state:sub(1, 1) == "/" then add(M.join(xdg_state, "sam-bridge")) end
  if home then
    if platform == "macos" then
      add(M.join(home, "Library", "Application Support", "sam-bridge"))
    else
      add(M.join(home, ".local", "state", "sam-bridge"))
    end
  end
  return candidates
end

--- How to start the daemon on this platform (what "isn't running" messages tell the user).
function M.start_command_text(platform)
  if platform == "windows" then
    return "Start it in a Command Prompt with:  sam-bridge run\n"
      .. "(installed as a service? then:  schtasks /Run /TN sam-bridge)\n"
      .. "or install it once to start at every login:  sam-bridge service install"
  elseif platform == "macos" then
    return "Start it in Terminal with:  sam-bridge run\n"
      .. "(installed as a service? then:  launchctl kickstart gui/$(id -u)/org.sam-bridge.daemon)\n"
      .. "or install it once to start at every login:  sam-bridge service install"
  end
  return "Start it in a terminal with:  sam-bridge run\n"
    .. "(installed as a service? then:  systemctl --user start sam-bridge)\n"
    .. "or install it once to start at every login:  sam-bridge service install"
end

M.NOT_RUNNING = "sam-bridge isn't running"

local NOT_RUNNING = M.NOT_RUNNING .. " (no daemon.json found in %s).\n\n%s"

--- Whether heartbeat.json's text shows a live daemon at `now` (seconds since the epoch): its time must
--- be younger than a few refresh intervals. Returns alive, age (nil when unreadable).
function M.heartbeat_alive(text, now)
  local doc = M.json_decode(text or "")
  if type(doc) ~= "table" or type(doc.time) ~= "number" then return false, nil end
  local interval = type(doc.interval) == "number" and doc.interval or 1
  local age = now - doc.time
  return age <= math.max(4, 4 * interval), age
end

--- A short stable key for a project folder (FNV-1a, 32 bit, hex): the name of its preset-list files.
function M.project_key(path)
  local hash = 2166136261
  for i = 1, #path do
    hash = ((hash ~ path:byte(i)) * 16777619) & 0xffffffff
  end
  return string.format("%08x", hash)
end

--- Reads daemon.json from the first candidate folder that has one.
--- `read_file(path)` returns the file's text or nil. Returns info (with `state_dir`) or nil, message.
function M.find_daemon(candidates, read_file, platform)
  for _, dir in ipairs(candidates) do
    local text = read_file(M.join(dir, "daemon.json"))
    if text then
      local info, err = M.json_decode(text)
      if type(info) ~= "table" then
        return nil, "sam-bridge's daemon.json in " .. dir .. " could not be read (" .. tostring(err)
          .. ").\nRestart sam-bridge (sam-bridge run) and try again."
      end
      info.state_dir = dir
      if type(info.requests_dir) ~= "string" or info.requests_dir == "" then
        info.requests_dir = M.join(dir, "requests")
      end
      if type(info.presets_file) ~= "string" or info.presets_file == "" then
        info.presets_file = M.join(dir, "presets.json")
      end
      if type(info.heartbeat_file) ~= "string" or info.heartbeat_file == "" then
        info.heartbeat_file = M.join(dir, "heartbeat.json")
      end
      if type(info.project_presets_dir) ~= "string" or info.project_presets_dir == "" then
        info.project_presets_dir = M.join(dir, "project-presets")
      end
      return info
    end
  end
  return nil, string.format(NOT_RUNNING, table.concat(candidates, " or "), M.start_command_text(platform))
end

---------------------------------------------------------------------------------------------------
-- Item -> request
---------------------------------------------------------------------------------------------------

-- Containers the daemon reads sample-exactly; anything else (mp3's encoder delay, video, REX...) is
-- rendered by REAPER first so the stems line up with what REAPER plays.
M.PLAIN_EXTENSIONS = { wav = true, wave = true, flac = true, aif = true, aiff = true, aifc = true,
                       w64 = true, rf64 = true, bwf = true }

local EPSILON = 1e-6

--- "file" when the take's source file can be sent as it is (with start/length), else "render", reason.
--- `take` describes the active take (see sam_bridge_reaper.describe_item for the fields).
function M.classify_take(take)
  if take.is_midi then return "render", "MIDI item" end
  if not take.file_path or take.file_path == "" then return "render", "no source file" end
  if take.is_section then return "render", "reversed or section source" end
  if math.abs((take.playrate or 1) - 1) > EPSILON then return "render", "playrate is not 1" end
  if math.abs(take.pitch or 0) > EPSILON then return "render", "pitch shifted" end
  if (take.fx_count or 0) > 0 then return "render", "take FX" end
  if (take.envelope_count or 0) > 0 then return "render", "take envelopes" end
  if (take.stretch_marker_count or 0) > 0 then return "render", "stretch markers" end
  if (take.channel_mode or 0) ~= 0 then return "render", "take channel mode" end
  if not M.PLAIN_EXTENSIONS[M.extension(take.file_path)] then
    return "render", "." .. M.extension(take.file_path) .. " file"
  end
  local start, length = take.start_offset or 0, take.item_length or 0
  if start < -EPSILON then return "render", "item starts before its source" end
  if take.source_length and start + length > take.source_length + 1e-4 then
    return "render", "item loops or runs past its source"
  end
  return "file"
end

--- Channels to render an item with: what REAPER plays for the take's channel mode (I_CHANMODE).
function M.render_channels(take)
  if take.is_midi then return 2 end
  local mode = take.channel_mode or 0
  if mode == 1 or mode >= 67 then return 2 end -- reversed stereo, or one stereo pair
  if mode >= 2 then return 1 end -- mono downmix, left, right, or one channel
  return math.max(1, math.floor(take.channels or 2))
end

--- Rounds seconds to whole microseconds: enough for sample accuracy, and tidy in the request file.
function M.round_seconds(value)
  return math.floor(value * 1e6 + 0.5) / 1e6
end

--- Seconds on the sample grid of `rate` (whole microseconds when the rate is unknown), so a start and
--- length cut exactly the samples REAPER plays.
function M.snap_seconds(value, rate)
  if rate and rate > 0 then return math.floor(value * rate + 0.5) / rate end
  return M.round_seconds(value)
end

--- Narrows an item to the part inside [span_start, span_end] (a time selection or razor area): the
--- stems go to `position`/`length` of the part, `part.offset` is where it starts in the item. Returns
--- false when the item lies outside, true otherwise (an item wholly inside is left as it is).
function M.apply_span(item, span_start, span_end)
  local first = math.max(item.position, span_start)
  local last = math.min(item.position + item.length, span_end)
  if last - first <= 1e-9 then return false end
  if first - item.position <= 1e-9 and item.position + item.length - last <= 1e-9 then return true end
  item.part = { offset = first - item.position, length = last - first }
  item.position, item.length = first, last - first
  return true
end

--- Razor edit areas of a track from P_RAZOREDITS ("start end \"envelope GUID\"" triples): the
--- track-level ones (empty GUID) as {start, end} pairs.
function M.parse_razor_edits(text)
  local spans = {}
  for start, stop, guid in (text or ""):gmatch("(%S+)%s+(%S+)%s+\"([^\"]*)\"") do
    local a, b = tonumber(start), tonumber(stop)
    if a and b and b > a and guid == "" then spans[#spans + 1] = { a, b } end
  end
  return spans
end

--- The request object (request-file schema) for one item.
--- `what` = {preset=name} or {prompt=text}; `item` = {mode, file_path | rendered_path, start_offset, length};
--- `opts` = {project_dir, output_dir, tag, options, audition (seconds)}.
function M.build_request(item, what, opts)
  opts = opts or {}
  local request = {}
  local part = item.part
  if item.mode == "file" then
    local rate = item.sample_rate or 0
    request.source = item.file_path
    request.start = M.snap_seconds(math.max((item.start_offset or 0) + (part and part.offset or 0), 0), rate)
    request.length = M.snap_seconds(item.length, rate)
  else
    request.source = item.rendered_path
    if part then -- the render covers the whole item: send the part of it
      request.start = M.snap_seconds(part.offset, item.render_rate or 0)
      request.length = M.snap_seconds(part.length, item.render_rate or 0)
    end
  end
  if what.preset and what.preset ~= "" then
    request.preset = what.preset
  elseif what.prompt and what.prompt:match("%S") then
    request.prompt = what.prompt
  else
    error("choose a preset or describe the sound to isolate", 0)
  end
  if opts.project_dir and opts.project_dir ~= "" then request.project_dir = opts.project_dir end
  if opts.output_dir and opts.output_dir ~= "" then request.output_dir = opts.output_dir end
  if opts.tag then request.tag = opts.tag end
  if opts.options and next(opts.options) then request.options = opts.options end
  if opts.audition then request.audition = opts.audition end
  return request
end

--- A request file name that sorts by time and does not collide: "reaper-20250101-120000-1a2b-3".
function M.request_name(timestamp, random_hex, counter)
  return string.format("reaper-%s-%s-%d", timestamp, random_hex, counter)
end

---------------------------------------------------------------------------------------------------
-- Render settings (used only when an item cannot be sent as a plain file)
---------------------------------------------------------------------------------------------------

-- Every render setting we change; all are saved before and restored after the render.
M.RENDER_NUMBER_KEYS = { "RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_CHANNELS", "RENDER_SRATE",
                         "RENDER_STARTPOS", "RENDER_ENDPOS", "RENDER_TAILFLAG", "RENDER_TAILMS",
                         "RENDER_ADDTOPROJ", "RENDER_DITHER", "RENDER_NORMALIZE" }
M.RENDER_STRING_KEYS = { "RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT", "RENDER_FORMAT2" }

-- "selected media items": the item with its take FX, fades and volume, before the track's FX. Never
-- 64 ("via master"), which would add the track's and the master's FX to what is separated.
M.RENDER_SOURCE_ITEMS = 32
M.WAV_24BIT_FORMAT = "ZXZhdxgAAQ==" -- base64 of REAPER's WAV sink config: "evaw", 24-bit PCM

--- The render settings for rendering one selected item to `<folder>/<file_name>.wav`.
function M.render_settings(folder, file_name, item)
  local numbers = {
    RENDER_SETTINGS = M.RENDER_SOURCE_ITEMS,
    RENDER_BOUNDSFLAG = 4, -- selected media items
    RENDER_CHANNELS = item.render_channels or 2,
    RENDER_SRATE = item.render_rate or 0, -- 0: the project's rate
    RENDER_STARTPOS = 0,
    RENDER_ENDPOS = 0,
    RENDER_TAILFLAG = 0, -- no tail: the file must be exactly the item
    RENDER_TAILMS = 0,
    RENDER_ADDTOPROJ = 0,
    RENDER_DITHER = 0,
    RENDER_NORMALIZE = 0, -- no normalising, limiting or fades: the stems must sum back to the item
  }
  local strings = {
    RENDER_FILE = folder,
    RENDER_PATTERN = file_name,
    RENDER_FORMAT = M.WAV_24BIT_FORMAT,
    RENDER_FORMAT2 = "",
  }
  return numbers, strings
end

--- Items that can share one render: same channel count, rate and kind (MIDI keeps its track's FX, audio
--- does not). Groups in the order their first item comes.
function M.render_groups(descs)
  local groups, by_key = {}, {}
  for _, desc in ipairs(descs) do
    local key = string.format("%d/%d/%s", desc.render_channels or 2, desc.render_rate or 0, tostring(desc.is_midi))
    if not by_key[key] then
      by_key[key] = {}
      groups[#groups + 1] = by_key[key]
    end
    table.insert(by_key[key], desc)
  end
  return groups
end

-- Item and take properties copied onto the stem items when the source file was sent as it is, so the
-- stems play back at the level and with the fades of the item they came from. A rendered item already
-- has them baked in.
M.ITEM_KEYS_TO_COPY = { "D_VOL", "D_FADEINLEN", "D_FADEOUTLEN", "D_FADEINLEN_AUTO", "D_FADEOUTLEN_AUTO",
                        "C_FADEINSHAPE", "C_FADEOUTSHAPE", "D_FADEINDIR", "D_FADEOUTDIR" }
M.TAKE_KEYS_TO_COPY = { "D_VOL", "D_PAN" }

require("sam_bridge_text")(M)

return M
