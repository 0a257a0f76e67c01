-- @noindex
-- sam-bridge for REAPER: everything that talks to REAPER (`reaper.*`, `gfx.*`). The action scripts are
-- thin wrappers around `separate_selected_items()` and `cancel_all()`; the logic lives in sam_bridge_core.
-- Lua has no sockets in stock REAPER, so we talk to the sam-bridge daemon through request/status files.

local core = require("sam_bridge_core")

local H = {}

local EXT = core.EXT_SECTION
local PICKUP_TIMEOUT = 15 -- seconds before we say the daemon has not picked a request up
local CLOSE_DELAY = 2.5 -- seconds the window stays up after the last job finished
local CMD_RENDER_MOST_RECENT = 42230 -- File: Render project, using the most recent render settings, auto-close
local CMD_BUILD_PEAKS = 40047 -- Peaks: Build any missing peaks
local RENDER_FOLDER = "sam-bridge renders"
local PICKUP_NOTE = "sam-bridge has not picked this up yet"
local PRESET_WAIT = 5 -- seconds to wait for the daemon's list of a project's presets
local HEARTBEAT_CHECK = 1 -- seconds between looks at the daemon's heartbeat while waiting
local ROW_CANCEL = "[ x ]"
local JOBS = "sam-bridge-jobs" -- ProjExtState section: one key per request, saved with the project
local SCRIPT_DIR = (debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or "")

---------------------------------------------------------------------------------------------------
-- Files
---------------------------------------------------------------------------------------------------

function H.read_file(path)
  local file = io.open(path, "rb")
  if not file then return nil end
  local text = file:read("a")
  file:close()
  return text
end

local function exists(path)
  local file = io.open(path, "rb")
  if file then file:close() return true end
  return false
end

--- Writes `<path>.tmp` then renames it, so the daemon never sees half a file. Never overwrites.
function H.write_file_atomic(path, text)
  if exists(path) then return nil, path .. " already exists" end
  local tmp = path .. ".tmp"
  local file, err = io.open(tmp, "wb")
  if not file then return nil, err end
  local ok, write_err = file:write(text)
  file:close()
  if not ok then
    os.remove(tmp)
    return nil, write_err
  end
  local renamed, rename_err = os.rename(tmp, path)
  if not renamed then
    os.remove(tmp)
    return nil, rename_err
  end
  return true
end

function H.alert(text)
  reaper.ShowMessageBox(text, "sam-bridge", 0)
end

---------------------------------------------------------------------------------------------------
-- The daemon and its presets
---------------------------------------------------------------------------------------------------

local function platform() return core.platform(reaper.GetOS()) end

--- The pointer file `sam-bridge reaper install` leaves beside the scripts: the daemon's state folder.
local function pointed_state_dir()
  local text = H.read_file(core.join(SCRIPT_DIR ~= "" and SCRIPT_DIR or ".", "sam-bridge-state-dir.txt"))
  return text and text:match("^%s*(.-)%s*$") or nil
end

function H.find_daemon()
  local candidates = core.state_dir_candidates(platform(), os.getenv)
  local pointed = pointed_state_dir()
  if pointed and pointed ~= "" then -- after SAM_BRIDGE_STATE_DIR, before the platform's defaults
    local env = os.getenv("SAM_BRIDGE_STATE_DIR")
    table.insert(candidates, math.min((env and env:match("%S")) and 2 or 1, #candidates + 1), pointed)
  end
  return core.find_daemon(candidates, H.read_file, platform())
end

--- nil when the daemon's heartbeat is fresh, else the message to show (with the start command).
function H.not_running_text(info)
  local alive = core.heartbeat_alive(H.read_file(info.heartbeat_file), os.time())
  if alive then return nil end
  return core.NOT_RUNNING .. " (its heartbeat, " .. info.heartbeat_file .. ", is missing or stale: it stopped or "
    .. "crashed).\n\n" .. core.start_command_text(platform())
    .. "\n\nRequests already sent are kept in the project: their stems come in on the next run of a "
    .. "sam-bridge action (or \"sam-bridge - Collect finished stems\") once it runs again."
end

--- The presets to offer: the daemon's shared list, or, for a project with presets of its own
--- (<project>/sam-bridge/presets/), the list the daemon keeps for it. Never waits: returns nil and the
--- answer file's path when that list is not there yet (the daemon writes it within a second or two).
function H.presets_for(info, project_dir)
  local shared = core.parse_presets(H.read_file(info.presets_file))
  local folder = core.project_presets_folder(project_dir)
  reaper.EnumerateFiles(folder, -1)  -- REAPER caches folder listings: read this one afresh
  if not reaper.EnumerateFiles(folder, 0) then return shared end
  local key = core.project_key(project_dir)
  local answer_path = core.join(info.project_presets_dir, key .. ".json")
  local want_path = core.join(info.project_presets_dir, key .. ".want")
  if H.read_file(want_path) ~= project_dir then
    reaper.RecursiveCreateDirectory(info.project_presets_dir, 0)
    os.remove(want_path)
    H.write_file_atomic(want_path, project_dir)
  end
  local text = H.read_file(answer_path)
  local doc = core.json_decode(text or "")
  if type(doc) ~= "table" or doc.project_dir ~= project_dir then return nil, answer_path end
  local presets = core.parse_presets(text)
  local problems = core.preset_problems(text)
  if #problems > 0 then
    H.alert("Some presets could not be read and are not in the menu:\n\n" .. table.concat(problems, "\n"))
  end
  return presets
end

--- Calls `fn(presets)` with the presets for the menu: at once, or from a defer loop once the daemon has
--- written the project's list (the shared list after PRESET_WAIT seconds, saying why).
function H.with_presets(info, project_dir, fn)
  local presets, answer_path = H.presets_for(info, project_dir)
  if presets then return fn(presets) end
  local deadline = reaper.time_precise() + PRESET_WAIT
  local function wait()
    local ready = H.presets_for(info, project_dir)
    if ready then return fn(ready) end
    if reaper.time_precise() >= deadline then
      H.alert("This project's own presets (" .. core.project_presets_folder(project_dir) .. ") could not be "
        .. "listed, so the menu shows the shared ones only: sam-bridge did not write " .. answer_path .. ".")
      return fn(core.parse_presets(H.read_file(info.presets_file)))
    end
    reaper.defer(wait)
  end
  reaper.defer(wait)
end

---------------------------------------------------------------------------------------------------
-- Items
---------------------------------------------------------------------------------------------------

local function item_string(item, key)
  local _, value = reaper.GetSetMediaItemInfo_String(item, key, "", false)
  return value
end

local function take_string(take, key)
  local _, value = reaper.GetSetMediaItemTakeInfo_String(take, key, "", false)
  return value
end

local function values_of(get, object, keys)
  local values = {}
  for _, key in ipairs(keys) do values[key] = get(object, key) end
  return values
end

--- Everything the logic needs to know about an item and its active take.
function H.describe_item(item)
  local track = reaper.GetMediaItem_Track(item)
  local _, track_name = reaper.GetSetMediaTrackInfo_String(track, "P_NAME", "", false)
  local desc = {
    item = item,
    track = track,
    track_name = core.fallback_track_name(track_name, reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")),
    position = reaper.GetMediaItemInfo_Value(item, "D_POSITION"),
    length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH"),
    guid = item_string(item, "GUID"),
  }
  desc.label = desc.track_name
  desc.item_length = desc.length
  local take = reaper.GetActiveTake(item)
  if not take then return desc end
  desc.take = take
  desc.is_midi = reaper.TakeIsMIDI(take)
  local source = reaper.GetMediaItemTake_Source(take)
  desc.is_section = reaper.GetMediaSourceParent(source) ~= nil
  desc.file_path = reaper.GetMediaSourceFileName(source)
  desc.source_length = (reaper.GetMediaSourceLength(source))
  desc.channels = reaper.GetMediaSourceNumChannels(source)
  desc.sample_rate = reaper.GetMediaSourceSampleRate(source)
  desc.playrate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  desc.pitch = reaper.GetMediaItemTakeInfo_Value(take, "D_PITCH")
  desc.start_offset = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  desc.channel_mode = reaper.GetMediaItemTakeInfo_Value(take, "I_CHANMODE")
  desc.fx_count = reaper.TakeFX_GetCount(take)
  desc.envelope_count = reaper.CountTakeEnvelopes(take)
  desc.stretch_marker_count = reaper.GetTakeNumStretchMarkers(take)
  local take_name = take_string(take, "P_NAME")
  desc.label = (take_name ~= "" and take_name) or (desc.file_path ~= "" and core.stem(desc.file_path))
    or desc.track_name
  desc.item_values = values_of(reaper.GetMediaItemInfo_Value, item, core.ITEM_KEYS_TO_COPY)
  desc.take_values = values_of(reaper.GetMediaItemTakeInfo_Value, take, core.TAKE_KEYS_TO_COPY)
  return desc
end

function H.selected_items()
  local items = {}
  for i = 0, reaper.CountSelectedMediaItems(0) - 1 do
    items[#items + 1] = reaper.GetSelectedMediaItem(0, i)
  end
  return items
end

local function select_only(items)
  reaper.SelectAllMediaItems(0, false)
  for _, item in ipairs(items) do reaper.SetMediaItemSelected(item, true) end
end

--- The project's folder; for an unsaved project, REAPER's default media folder.
function H.project_dir()
  local _, project_file = reaper.EnumProjects(-1)
  if project_file and project_file ~= "" then return core.dirname(project_file) end
  return reaper.GetProjectPath()
end

-- What REAPER puts into a "selected media items" render besides the item: the track's FX and fader
-- (User Guide 7.70, 21.5). An audio item is separated as it sounds before the track's FX, so they are
-- bypassed for its render; a MIDI item needs its track's instrument, so they stay. The fader and pan go
-- to unity either way (stems get tracks of their own). All is put back right after the render.
local function neutral_tracks(group)
  local saved, seen = {}, {}
  for _, desc in ipairs(group) do
    local track = desc.track
    if not seen[track] then
      seen[track] = true
      saved[#saved + 1] = { track = track, fx = reaper.GetMediaTrackInfo_Value(track, "I_FXEN"),
                            vol = reaper.GetMediaTrackInfo_Value(track, "D_VOL"),
                            pan = reaper.GetMediaTrackInfo_Value(track, "D_PAN") }
      if not desc.is_midi then reaper.SetMediaTrackInfo_Value(track, "I_FXEN", 0) end
      reaper.SetMediaTrackInfo_Value(track, "D_VOL", 1)
      reaper.SetMediaTrackInfo_Value(track, "D_PAN", 0)
    end
  end
  return function()
    for _, s in ipairs(saved) do
      reaper.SetMediaTrackInfo_Value(s.track, "I_FXEN", s.fx)
      reaper.SetMediaTrackInfo_Value(s.track, "D_VOL", s.vol)
      reaper.SetMediaTrackInfo_Value(s.track, "D_PAN", s.pan)
    end
  end
end

--- Renders a group of items that share channels, rate and kind in ONE render (one dialog): each to
--- `<folder>/<desc.request_name>.wav` (the pattern `$item` with each take named after its request for the
--- moment). Sets desc.rendered_path, or desc.render_error. The user's render settings, item selection,
--- take names and track FX/fader are saved first and put back afterwards.
local function render_group(group, folder)
  local numbers, strings = core.render_settings(folder, "$item", group[1])
  local saved_numbers, saved_strings = {}, {}
  for _, key in ipairs(core.RENDER_NUMBER_KEYS) do
    saved_numbers[key] = reaper.GetSetProjectInfo(0, key, 0, false)
  end
  for _, key in ipairs(core.RENDER_STRING_KEYS) do
    local _, value = reaper.GetSetProjectInfo_String(0, key, "", false)
    saved_strings[key] = value
  end
  local selection = H.selected_items()
  local names = {}
  for i, desc in ipairs(group) do names[i] = take_string(desc.take, "P_NAME") end
  local restore_tracks

  reaper.PreventUIRefresh(1)
  local ok, err = pcall(function()
    for _, key in ipairs(core.RENDER_NUMBER_KEYS) do reaper.GetSetProjectInfo(0, key, numbers[key], true) end
    for _, key in ipairs(core.RENDER_STRING_KEYS) do reaper.GetSetProjectInfo_String(0, key, strings[key], true) end
    local items = {}
    for i, desc in ipairs(group) do
      items[i] = desc.item
      reaper.GetSetMediaItemTakeInfo_String(desc.take, "P_NAME", desc.request_name, true)
    end
    select_only(items)
    restore_tracks = neutral_tracks(group)
    local _, targets = reaper.GetSetProjectInfo_String(0, "RENDER_TARGETS", "", false)
    local by_name = {}
    for target in (targets or ""):gmatch("[^;]+") do by_name[core.stem(target)] = target end
    reaper.Main_OnCommand(CMD_RENDER_MOST_RECENT, 0)
    for _, desc in ipairs(group) do desc.rendered_path = by_name[desc.request_name] end
  end)

  if restore_tracks then restore_tracks() end
  for i, desc in ipairs(group) do reaper.GetSetMediaItemTakeInfo_String(desc.take, "P_NAME", names[i], true) end
  for _, key in ipairs(core.RENDER_NUMBER_KEYS) do reaper.GetSetProjectInfo(0, key, saved_numbers[key], true) end
  for _, key in ipairs(core.RENDER_STRING_KEYS) do reaper.GetSetProjectInfo_String(0, key, saved_strings[key], true) end
  select_only(selection)
  reaper.PreventUIRefresh(-1)

  for _, desc in ipairs(group) do
    if not ok then
      desc.render_error = tostring(err)
    elseif not desc.rendered_path or not exists(desc.rendered_path) then
      desc.render_error = "REAPER did not write " .. (desc.rendered_path or core.join(folder, desc.request_name .. ".wav"))
      desc.rendered_path = nil
    end
  end
end

--- Renders every item of `descs` that needs it, with as few renders as their channels, rates and kinds
--- allow (usually one).
function H.render_items(descs, folder)
  if #descs == 0 then return end
  reaper.RecursiveCreateDirectory(folder, 0)
  for _, desc in ipairs(descs) do
    desc.render_channels = core.render_channels(desc)
    desc.render_rate = (not desc.is_midi and desc.sample_rate and desc.sample_rate > 0) and desc.sample_rate or 0
  end
  for _, group in ipairs(core.render_groups(descs)) do render_group(group, folder) end
end

---------------------------------------------------------------------------------------------------
-- Stems -> tracks
---------------------------------------------------------------------------------------------------

--- Inserts one track per stem right under the source track, items at the source item's position and
--- length, in one undo block. Returns true or nil, message.
function H.insert_stems(job, status)
  for _, stem in ipairs(status.stems) do
    if not exists(stem.path) then
      return nil, "sam-bridge says the stems are ready, but this file is missing:\n" .. stem.path
    end
  end
  if #status.stems == 0 then return nil, "sam-bridge finished but sent no stems." end

  if job.as_takes and not job.partial and job.item and reaper.ValidatePtr2(job.project, job.item, "MediaItem*") then
    return H.insert_stems_as_takes(job, status)
  end
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  local ok, err = pcall(function()
    local track_ok = job.track ~= nil and reaper.ValidatePtr2(job.project, job.track, "MediaTrack*")
    local index = track_ok and math.floor(reaper.GetMediaTrackInfo_Value(job.track, "IP_TRACKNUMBER"))
      or reaper.CountTracks(0)
    local depth = track_ok and reaper.GetMediaTrackInfo_Value(job.track, "I_FOLDERDEPTH") or 0
    local color = track_ok and reaper.GetMediaTrackInfo_Value(job.track, "I_CUSTOMCOLOR") or 0
    local last_track
    for i, stem in ipairs(status.stems) do
      reaper.InsertTrackAtIndex(index + i - 1, true)
      local track = reaper.GetTrack(0, index + i - 1)
      reaper.GetSetMediaTrackInfo_String(track, "P_NAME", core.track_name(job.track_name, job.what, stem.label), true)
      if color ~= 0 then reaper.SetMediaTrackInfo_Value(track, "I_CUSTOMCOLOR", color) end
      local item = reaper.AddMediaItemToTrack(track)
      reaper.SetMediaItemInfo_Value(item, "D_POSITION", job.position)
      reaper.SetMediaItemInfo_Value(item, "D_LENGTH", job.length)
      local take = reaper.AddTakeToMediaItem(item)
      reaper.SetMediaItemTake_Source(take, reaper.PCM_Source_CreateFromFile(stem.path))
      reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", 0)
      reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", core.stem(stem.path), true)
      if job.mode == "file" then
        for key, value in pairs(job.item_values or {}) do reaper.SetMediaItemInfo_Value(item, key, value) end
        for key, value in pairs(job.take_values or {}) do reaper.SetMediaItemTakeInfo_Value(take, key, value) end
      end
      last_track = track
    end
    if track_ok and depth < 0 then -- the source closed a folder: the stems stay inside it
      reaper.SetMediaTrackInfo_Value(last_track, "I_FOLDERDEPTH", depth)
      reaper.SetMediaTrackInfo_Value(job.track, "I_FOLDERDEPTH", 0)
    end
    if job.mute_source and job.item and reaper.ValidatePtr2(job.project, job.item, "MediaItem*") then
      reaper.SetMediaItemInfo_Value(job.item, "B_MUTE", 1)
    end
  end)
  reaper.PreventUIRefresh(-1)
  reaper.Undo_EndBlock("sam-bridge: stems of " .. job.label, -1)
  reaper.TrackList_AdjustWindows(false)
  reaper.UpdateArrange()
  if not ok then return nil, "Could not insert the stems: " .. tostring(err) end
  reaper.Main_OnCommand(CMD_BUILD_PEAKS, 0)
  return true
end

--- The "stems as takes" option: each stem becomes a take of the source item (same position and
--- length; the source take stays the active one, so nothing sounds different until you pick a take).
function H.insert_stems_as_takes(job, status)
  reaper.Undo_BeginBlock()
  reaper.PreventUIRefresh(1)
  local ok, err = pcall(function()
    for _, stem in ipairs(status.stems) do
      local take = reaper.AddTakeToMediaItem(job.item)
      reaper.SetMediaItemTake_Source(take, reaper.PCM_Source_CreateFromFile(stem.path))
      reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", 0)
      reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", core.what_label(job.what) .. " (" .. stem.label .. ")", true)
      if job.mode == "file" then
        for key, value in pairs(job.take_values or {}) do reaper.SetMediaItemTakeInfo_Value(take, key, value) end
      end
    end
  end)
  reaper.PreventUIRefresh(-1)
  reaper.Undo_EndBlock("sam-bridge: stems of " .. job.label .. " as takes", -1)
  reaper.UpdateArrange()
  if not ok then return nil, "Could not add the stems as takes: " .. tostring(err) end
  reaper.Main_OnCommand(CMD_BUILD_PEAKS, 0)
  return true
end

---------------------------------------------------------------------------------------------------
-- Asking what to separate
---------------------------------------------------------------------------------------------------

local function mute_source_enabled()
  return reaper.GetExtState(EXT, "mute_source") == "1"
end

--- Shows the preset menu (and the prompt box). Returns {preset=...} or {prompt=...}, or nil if dismissed.
local function stems_as_takes_enabled()
  return reaper.GetExtState(EXT, "stems_as_takes") == "1"
end

local function recent_prompts()
  local list = {}
  for line in reaper.GetExtState(EXT, "recent_prompts"):gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

local function remember(prompt)
  local list = core.remember_prompt(reaper.GetExtState(EXT, "recent_prompts"), prompt)
  reaper.SetExtState(EXT, "recent_prompts", table.concat(list, "\n"), true)
  reaper.SetExtState(EXT, "last_prompt", prompt, true)
end

function H.ask_what(presets)
  while true do
    local menu, actions = core.build_preset_menu(presets, mute_source_enabled(), recent_prompts(),
      stems_as_takes_enabled())
    local x, y = reaper.GetMousePosition()
    gfx.init("sam-bridge", 0, 0, 0, x, y)
    gfx.x, gfx.y = gfx.mouse_x or 0, gfx.mouse_y or 0
    local choice = gfx.showmenu(menu)
    gfx.quit()
    local action = actions[choice]
    if not action or action.kind == "none" then return nil end
    if action.kind == "preset" then return { preset = action.name } end
    if action.kind == "toggle_mute" then
      reaper.SetExtState(EXT, "mute_source", mute_source_enabled() and "0" or "1", true)
    elseif action.kind == "toggle_takes" then
      reaper.SetExtState(EXT, "stems_as_takes", stems_as_takes_enabled() and "0" or "1", true)
    elseif action.kind == "recent" then
      remember(action.prompt)
      return { prompt = action.prompt }
    elseif action.kind == "prompt" then
      local last = reaper.GetExtState(EXT, "last_prompt")
      local ok, text = reaper.GetUserInputs("sam-bridge: describe the sound to isolate", 1,
        "Sound (e.g. piano playing):,extrawidth=300,separator=\n", last)
      if not ok or not text:match("%S") then return nil end
      remember(text)
      return { prompt = text }
    end
  end
end

---------------------------------------------------------------------------------------------------
-- Requests kept in the project (ProjExtState), so a paid job outlives this script, the project tab
-- and REAPER itself: any later sam-bridge action re-attaches to them.
---------------------------------------------------------------------------------------------------

local RECORD_FIELDS = { "name", "status_path", "cancel_path", "label", "what", "mode", "item_guid", "track_guid",
                        "track_name", "position", "length", "item_values", "take_values", "mute_source",
                        "as_takes", "partial" }

function H.persist(job)
  local record = {}
  for _, key in ipairs(RECORD_FIELDS) do record[key] = job[key] end
  reaper.SetProjExtState(job.project, JOBS, job.name, core.json_encode(record))
end

--- Forgets a request; false when it was already gone (another instance took its stems in).
function H.forget(job)
  local _, value = reaper.GetProjExtState(job.project, JOBS, job.name)
  if value == "" then return false end
  reaper.SetProjExtState(job.project, JOBS, job.name, "")
  return true
end

local function find_track(project, guid)
  for i = 0, reaper.CountTracks(project) - 1 do
    local track = reaper.GetTrack(project, i)
    if reaper.GetTrackGUID(track) == guid then return track end
  end
  return nil
end

local function find_item(track, guid)
  if not track then return nil end
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local item = reaper.GetTrackMediaItem(track, i)
    local _, item_guid = reaper.GetSetMediaItemInfo_String(item, "GUID", "", false)
    if item_guid == guid then return item end
  end
  return nil
end

--- The requests saved in the open projects, as jobs (skipping names in `known`).
function H.saved_jobs(known)
  local jobs = {}
  local index = 0
  while true do
    local project = reaper.EnumProjects(index)
    if not project then break end
    local i = 0
    while true do
      local found, name, value = reaper.EnumProjExtState(project, JOBS, i)
      if not found then break end
      i = i + 1
      local record = core.json_decode(value or "")
      if type(record) == "table" and not known[name] and type(record.status_path) == "string" then
        -- the record's own name: REAPER may hand keys back in another case
        record.name, record.project = type(record.name) == "string" and record.name or name, project
        record.track = find_track(project, record.track_guid or "")
        record.item = find_item(record.track, record.item_guid or "")
        record.sent_at = reaper.time_precise()
        record.reattached = true
        jobs[#jobs + 1] = record
      end
    end
    index = index + 1
  end
  return jobs
end

---------------------------------------------------------------------------------------------------
-- The running session: jobs, polling, progress window
---------------------------------------------------------------------------------------------------

local Session = {}
Session.__index = Session

local function new_session(info)
  return setmetatable({
    info = info,
    jobs = {},
    names = {},
    instance = string.format("%x%04x", os.time(), math.random(0, 0xffff)),
    window_open = false,
    finished_at = nil,
    cancel_seen = reaper.GetExtState(EXT, "cancel"),
    heartbeat_at = -math.huge,
  }, Session)
end

function Session:add(job)
  if self.names[job.name] then return end
  self.names[job.name] = true
  self.jobs[#self.jobs + 1] = job
end

--- Picks up the requests saved in the open projects that this session does not follow yet.
function Session:reattach()
  for _, job in ipairs(H.saved_jobs(self.names)) do self:add(job) end
end

function Session:open_jobs()
  local open = {}
  for _, job in ipairs(self.jobs) do
    if not job.closed then open[#open + 1] = job end
  end
  return open
end

--- Publishes our open requests for the Cancel action (other running instances keep their lines).
function Session:publish()
  local lines = {}
  for line in (reaper.GetExtState(EXT, "active") .. "\n"):gmatch("([^\n]*)\n") do
    if line ~= "" and line:sub(1, #self.instance + 1) ~= self.instance .. "\t" then lines[#lines + 1] = line end
  end
  for _, job in ipairs(self:open_jobs()) do lines[#lines + 1] = self.instance .. "\t" .. job.cancel_path end
  reaper.SetExtState(EXT, "active", table.concat(lines, "\n"), false)
end

--- Cancels one request: the daemon cancels it at the service; its stems will not be collected.
function Session:cancel(job)
  H.write_cancel_file(job.cancel_path)
  H.forget(job)
  job.closed = true
  job.note = "cancelled"
end

--- Cancels every open request and ends the session at once.
function Session:cancel_all()
  for _, job in ipairs(self:open_jobs()) do self:cancel(job) end
  self.finished_at = -math.huge
end

function Session:poll(job, now)
  local text = H.read_file(job.status_path)
  if text then
    local status = core.parse_status(text)
    if status then -- a status caught mid-replace is simply read again next time
      job.status = status
      if job.note == PICKUP_NOTE then job.note = nil end
    end
  elseif now - job.sent_at > PICKUP_TIMEOUT and not job.note then
    job.note = PICKUP_NOTE
  end
  local status = job.status
  if not status or not status.finished then return end
  job.note = nil
  if status.state == "done" then
    local current = reaper.EnumProjects(-1)
    if current ~= job.project then
      job.note = "stems ready: switch back to their project tab to insert them"
      return
    end
    job.closed = true
    if not H.forget(job) then return end -- another sam-bridge action inserted them already
    local ok, err = H.insert_stems(job, status)
    if ok then
      job.note = "stems inserted"
    else
      job.note = "could not insert the stems"
      H.alert(job.label .. ": " .. err)
    end
  elseif status.state == "failed" then
    job.closed = true
    if H.forget(job) then H.alert(job.label .. " could not be separated.\n\n" .. core.failure_text(status)) end
  else
    job.closed = true
    H.forget(job)
  end
end

function Session:draw()
  local line_height = 22
  local width, height = 560, 20 + line_height * (#self.jobs + 2)
  if not self.window_open then
    gfx.init("sam-bridge", width, height)
    gfx.setfont(1, "Arial", 15)
    self.window_open = true
  end
  local char = gfx.getchar()
  if char < 0 or char == 27 then -- closed or Escape: keep working in the background
    gfx.quit()
    self.window_open = nil
    return
  end
  gfx.set(0.13, 0.13, 0.13)
  gfx.rect(0, 0, gfx.w, gfx.h, 1)
  for i, job in ipairs(self.jobs) do
    local y = 10 + (i - 1) * line_height
    local progress = job.status and job.status.progress or 0
    if job.status and job.status.state == "done" then progress = 1 end
    gfx.set(0.2, 0.45, 0.7)
    gfx.rect(10, y, math.floor((gfx.w - 20) * progress), line_height - 4, 1)
    gfx.set(0.92, 0.92, 0.92)
    gfx.x, gfx.y = 14, y + 2
    gfx.drawstr(core.progress_line(job, reaper.time_precise()))
    if not job.closed then -- this item's own cancel button at the row's right end
      local cancel_w = gfx.measurestr(ROW_CANCEL)
      gfx.x = gfx.w - cancel_w - 14
      gfx.drawstr(ROW_CANCEL)
      job.cancel_box = { x = gfx.w - cancel_w - 14, y = y, h = line_height }
    end
  end
  local open = #self:open_jobs()
  local button = open > 0 and "[ Cancel all ]" or "[ Close ]"
  local button_w, button_h = gfx.measurestr(button)
  local bx, by = gfx.w - button_w - 12, gfx.h - button_h - 10
  gfx.x, gfx.y = bx, by
  gfx.drawstr(button)
  local clicked = gfx.mouse_cap & 1 == 1
  if clicked and not self.mouse_down then
    if gfx.mouse_x >= bx and gfx.mouse_y >= by then
      if open > 0 then self:cancel_all() else self.finished_at = -math.huge end
    else
      for _, job in ipairs(self:open_jobs()) do
        local box = job.cancel_box
        if box and gfx.mouse_x >= box.x and gfx.mouse_y >= box.y and gfx.mouse_y < box.y + box.h then
          self:cancel(job)
        end
      end
    end
  end
  self.mouse_down = clicked
  gfx.update()
end

--- Whether the daemon still runs (looked at once a second); tells the user and ends when it does not.
function Session:daemon_gone(now)
  if now - self.heartbeat_at < HEARTBEAT_CHECK then return false end
  self.heartbeat_at = now
  local text = H.not_running_text(self.info)
  if not text then return false end
  H.alert(text)
  return true
end

--- One pass of the defer loop; schedules the next while anything is open or shown.
function Session:tick()
  local now = reaper.time_precise()
  local cancel_token = reaper.GetExtState(EXT, "cancel")
  if cancel_token ~= self.cancel_seen then -- the Cancel action ran
    self.cancel_seen = cancel_token
    self:cancel_all()
  end
  for _, job in ipairs(self:open_jobs()) do self:poll(job, now) end
  if #self:open_jobs() > 0 and self:daemon_gone(now) then
    self:stop() -- the requests stay saved in the project for the next run
    return
  end
  self:publish()
  if self.window_open ~= nil then self:draw() end
  if #self:open_jobs() == 0 then
    self.finished_at = self.finished_at or now
    if not self.window_open or now - self.finished_at >= CLOSE_DELAY then
      self:stop()
      return
    end
  end
  reaper.defer(function() self:tick() end)
end

function Session:stop()
  if self.window_open then gfx.quit() end
  self.window_open = nil
  for _, job in ipairs(self.jobs) do job.closed = true end
  self:publish()
end

--- Starts the defer loop (and the window) for the session's jobs.
function Session:run()
  reaper.atexit(function() self:stop() end)
  self:tick()
end

---------------------------------------------------------------------------------------------------
-- Actions
---------------------------------------------------------------------------------------------------

function H.write_cancel_file(path)
  if exists(path) then return true end
  local file = io.open(path, "wb")
  if not file then return nil end
  file:close()
  return true
end

local request_counter = 0

--- A request name no earlier request used: not in the requests folder, not saved in the project (two
--- runs in one second with the same random part must not collide).
local function next_request_name(requests_dir)
  while true do
    request_counter = request_counter + 1
    local name = core.request_name(os.date("%Y%m%d-%H%M%S"), string.format("%04x", math.random(0, 0xffff)),
      request_counter)
    local _, saved = reaper.GetProjExtState(0, JOBS, name)
    if saved == "" and not exists(core.join(requests_dir, name .. ".json")) then return name end
  end
end

--- Builds and writes one request for a described (and, if need be, rendered) item; returns the job or
--- nil, message.
local function start_job(info, desc, what, project, project_dir)
  if not desc.take then return nil, "the item is empty" end
  local name = desc.request_name
  if desc.mode == "render" and not desc.rendered_path then
    return nil, "REAPER could not render it first (" .. tostring(desc.render_error) .. ")"
  end
  local ok, request = pcall(core.build_request, desc, what,
    { project_dir = project_dir, tag = "reaper:" .. (desc.guid or name) })
  if not ok then return nil, request end
  local encoded_ok, text = pcall(core.json_encode, request)
  if not encoded_ok then return nil, text end
  reaper.RecursiveCreateDirectory(info.requests_dir, 0)
  local base = core.join(info.requests_dir, name)
  local job = {
    name = name, request_path = base .. ".json", status_path = base .. ".status.json",
    cancel_path = base .. ".cancel", label = desc.label, what = what, mode = desc.mode,
    item = desc.item, item_guid = desc.guid, track = desc.track, track_guid = reaper.GetTrackGUID(desc.track),
    track_name = desc.track_name, project = project,
    position = desc.position, length = desc.length, item_values = desc.item_values,
    take_values = desc.take_values, mute_source = mute_source_enabled(),
    as_takes = stems_as_takes_enabled(), partial = desc.part ~= nil,
    sent_at = reaper.time_precise(),
  }
  H.persist(job) -- before the daemon can see the request: a paid job is never only in this script's memory
  local written, err = H.write_file_atomic(base .. ".json", text)
  if not written then
    H.forget(job)
    return nil, "could not write the request (" .. tostring(err) .. ")"
  end
  return job
end

--- What to separate: with razor edit areas, the part of each item under them (selected or not, as
--- REAPER's own razor edits work); else the selected items, only their part inside the time selection
--- when there is one. Returns a list of {item, span = {start, end} | nil}, and the items left out.
function H.targets()
  local targets, outside = {}, {}
  for t = 0, reaper.CountTracks(0) - 1 do
    local track = reaper.GetTrack(0, t)
    local _, razor = reaper.GetSetMediaTrackInfo_String(track, "P_RAZOREDITS", "", false)
    for _, span in ipairs(core.parse_razor_edits(razor)) do
      for i = 0, reaper.CountTrackMediaItems(track) - 1 do
        local item = reaper.GetTrackMediaItem(track, i)
        local position = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
        local length = reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
        if position < span[2] and position + length > span[1] then targets[#targets + 1] = { item = item, span = span } end
      end
    end
  end
  if #targets > 0 then return targets, outside end
  local start, stop = reaper.GetSet_LoopTimeRange2(0, false, false, 0, 0, false)
  local span = stop > start and { start, stop } or nil
  for _, item in ipairs(H.selected_items()) do targets[#targets + 1] = { item = item, span = span } end
  return targets, outside
end

--- Describes the items (narrowed to their span), names their requests and renders those that need it
--- (in one go). Items outside their span are left out with a note in `problems`.
local function prepare_items(targets, project_dir, requests_dir, problems)
  local descs, to_render = {}, {}
  for _, target in ipairs(targets) do
    local desc = H.describe_item(target.item)
    if target.span and not core.apply_span(desc, target.span[1], target.span[2]) then
      problems[#problems + 1] = desc.label .. ": outside the time selection, left as it is"
    else
      if desc.part then -- the item's fades belong to its edges, not to the part
        desc.item_values = { D_VOL = desc.item_values and desc.item_values.D_VOL or 1 }
      end
      desc.request_name = next_request_name(requests_dir)
      if desc.take then
        desc.mode = core.classify_take(desc)
        if desc.mode == "render" then to_render[#to_render + 1] = desc end
      end
      descs[#descs + 1] = desc
    end
  end
  H.render_items(to_render, core.join(project_dir, RENDER_FOLDER))
  return descs
end

--- Lets a second run of an action end the first and start anew, with no "already running" prompt
--- (REAPER 7.03+; the saved requests make that safe).
function H.set_action_options()
  if reaper.set_action_options then reaper.set_action_options(1 | 2) end
end

--- The session every action starts with: the requests saved in the open projects, finished ones
--- inserted at once.
local function reattached_session(info)
  local session = new_session(info)
  session:reattach()
  local now = reaper.time_precise()
  for _, job in ipairs(session:open_jobs()) do session:poll(job, now) end
  return session
end

--- Action "sam-bridge: Separate selected items…" (or one preset's action, with `preset`).
function H.separate_selected_items(preset)
  H.set_action_options()
  math.randomseed(os.time() + math.floor((reaper.time_precise() % 1) * 1e6))
  local info, err = H.find_daemon()
  local session = reattached_session(info or {})
  if not info then return H.alert(err) end
  local not_running = H.not_running_text(info)
  if not_running then return H.alert(not_running) end
  local items = H.targets()
  if #items == 0 then
    if #session:open_jobs() > 0 then session:run() end
    return H.alert("Select the items to separate first, then run this action again.")
  end
  local project = reaper.EnumProjects(-1)
  local project_dir = H.project_dir()

  local function send(what)
    local problems = {}
    for _, desc in ipairs(prepare_items(items, project_dir, info.requests_dir, problems)) do
      local job, problem = start_job(info, desc, what, project, project_dir)
      if job then session:add(job) else problems[#problems + 1] = (desc.label or "item") .. ": " .. problem end
    end
    if #problems > 0 then H.alert("Some items were not sent:\n\n" .. table.concat(problems, "\n")) end
    if #session:open_jobs() > 0 then session:run() end
  end

  if preset then
    send({ preset = preset })
    return session
  end
  H.with_presets(info, project_dir, function(presets)
    local what = H.ask_what(presets)
    if what then send(what) elseif #session:open_jobs() > 0 then session:run() end
  end)
  return session
end

--- Action "sam-bridge - Collect finished stems": inserts the stems of requests saved in the open
--- projects, and keeps waiting for those still running.
function H.collect_finished()
  H.set_action_options()
  local info, err = H.find_daemon()
  local session = reattached_session(info or {})
  local inserted = 0
  for _, job in ipairs(session.jobs) do
    if job.note == "stems inserted" then inserted = inserted + 1 end
  end
  local waiting = #session:open_jobs()
  if waiting == 0 then
    if inserted == 0 then H.alert("Nothing to collect: this project has no sam-bridge requests waiting.") end
    return session
  end
  if not info then return H.alert(err) end
  local not_running = H.not_running_text(info)
  if not_running then return H.alert(not_running) end
  session:run()
  return session
end

--- Action "sam-bridge: Cancel": asks the daemon to cancel every separation this REAPER started,
--- including requests saved in the open projects by earlier runs.
function H.cancel_all()
  local count, seen = 0, {}
  for line in (reaper.GetExtState(EXT, "active") .. "\n"):gmatch("([^\n]*)\n") do
    local path = line:match("\t(.+)$")
    if path and not seen[path] and H.write_cancel_file(path) then
      seen[path] = true
      count = count + 1
    end
  end
  for _, job in ipairs(H.saved_jobs({})) do
    local status = core.parse_status(H.read_file(job.status_path) or "")
    if not (status and status.state == "done") then -- finished and paid for: kept for Collect
      if not seen[job.cancel_path] and H.write_cancel_file(job.cancel_path) then count = count + 1 end
      seen[job.cancel_path] = true
      H.forget(job)
    end
  end
  reaper.SetExtState(EXT, "cancel", tostring(reaper.time_precise()), false)
  if count == 0 then H.alert("Nothing to cancel: no separation started from REAPER is running.") end
  return count
end

return H
