-- A stand-in for the REAPER host (the `reaper` and `gfx` tables ReaScript gets), built from a scenario:
-- tracks, items, takes and their sources. It records what a script does to the project (tracks inserted,
-- items added, render settings, message boxes, undo blocks) so tests can check it.
--
-- It is as strict as REAPER where our scripts could go wrong:
--   * Every `reaper.*` function the scripts may call is declared (reaper_api.lua) with the argument types
--     and return values of REAPER's own ReaScript documentation (REAPER 7.x, "ReaScript API" help page,
--     https://www.reaper.fm/sdk/reascript/reascripthelp.html, Lua column; set_action_options since 7.03).
--     Calling any other name, passing a wrong type, too many arguments, or a MediaItem where a
--     MediaTrack is wanted raises an error, as REAPER's Lua binding does (a name not in the API reads as
--     nil, as in REAPER). It is stricter in one way: numeric text where a number is documented, which
--     Lua's C API would convert, is refused. The fake's own answers are checked against the same table,
--     so the fake cannot drift from the documentation either. gfx.* is checked the same way.
--   * One instance per action: running a script whose earlier instance still has deferred work shows
--     REAPER's "script is already running" prompt (answered from the scenario), unless the script set
--     `set_action_options` (1: terminate the old instance; 1|2: terminate and re-launch).
--   * `defer` runs a function on the next UI cycle; an instance ends (its `atexit` functions run) when
--     it has nothing deferred any more.
--   * ExtState with persist=true and the project's ProjExtState survive `restart()`, which also makes
--     every MediaTrack/MediaItem pointer invalid, as REAPER closing and reopening the project does.
--   * EnumProjects lists the open tabs only; closing one (the driver's close_project) makes its
--     ReaProject pointer an error wherever a project is passed (REAPER would crash on freed memory).
--   * EnumerateFiles/EnumerateSubdirectories list the real folders; index -1 re-reads (lists nothing).
--   * A simulated clock: calls that block REAPER's UI thread (ExecProcess, renders) advance it; each UI
--     cycle's blocking time is recorded so a test can check nothing held the UI thread over 100 ms.
--   * Renders write one file per selected item, named by the pattern's $item (REAPER User Guide 7.70,
--     21.5). Scripts, defer cycles and restarts live in fake_reaper_runtime.lua.

local Fake = {}

-- Set by the driver (core.array) so empty lists encode as [] in snapshots.
Fake.array = function(t) return t end

local function copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end

local Api = require("reaper_api")
Fake.SIGNATURES, Fake.GFX_SIGNATURES = Api.SIGNATURES, Api.GFX_SIGNATURES
local checked = Api.checked

---------------------------------------------------------------------------------------------------
-- The host
---------------------------------------------------------------------------------------------------

local TAKE_DEFAULTS = { D_PLAYRATE = 1, D_VOL = 1, D_PAN = 0, D_PITCH = 0, D_STARTOFFS = 0, I_CHANMODE = 0 }
local ITEM_DEFAULTS = { D_VOL = 1, B_MUTE = 0 }
-- What the UI thread spends on a call that blocks it (simulated seconds).
local PROCESS_START_COST = 0.3 -- a Python start, at the least
local UI_BUDGET = 0.1

function Fake.new(scenario)
  local host = {
    scenario = scenario,
    clock = 1000.0,
    instances = {},        -- script path -> {deferred = {...}, atexit = {...}}
    action_options = {},   -- script path -> flag set by set_action_options
    relaunch_prompts = {}, -- scripts REAPER asked "already running?" about
    blocks = {},           -- {what, seconds} for every call that held the UI thread
    cycle_cost = 0,
    longest_cycle = 0,
    messages = {},
    input_captions = {},
    menus = {},
    executed = {},
    undo_blocks = {},
    undo_depth = 0,
    refresh_depth = 0,
    commands = {},
    renders = {},
    ext = {},
    ext_persist = {},
    project_info = { RENDER_SETTINGS = 0, RENDER_BOUNDSFLAG = 1, RENDER_CHANNELS = 2, RENDER_SRATE = 44100,
                     RENDER_TAILFLAG = 18, RENDER_TAILMS = 1000, RENDER_ADDTOPROJ = 1, RENDER_NORMALIZE = 5,
                     RENDER_DITHER = 3, RENDER_STARTPOS = 0, RENDER_ENDPOS = 0 },
    project_strings = { RENDER_FILE = "/user/renders", RENDER_PATTERN = "$project", RENDER_FORMAT = "bDNwbQ==",
                        RENDER_FORMAT2 = "Y2FsZg==" },
    gfx = { open = false, closed_by_user = false, frames = {}, current = {} },
    answers = { menu = copy(scenario.answers and scenario.answers.menu),
                inputs = copy(scenario.answers and scenario.answers.inputs),
                dialogs = copy(scenario.answers and scenario.answers.dialogs),
                relaunch = scenario.answers and scenario.answers.relaunch or "abort" },
    next_guid = 1,
    loop = scenario.time_selection or { 0, 0 },
  }
  for k, v in pairs(scenario.project_info or {}) do host.project_info[k] = v end
  for k, v in pairs(scenario.project_strings or {}) do host.project_strings[k] = v end
  for k, v in pairs(scenario.ext_state or {}) do
    host.ext[k] = v
    host.ext_persist[k] = true
  end

  host.project = { kind = "project", file = scenario.project_file or "", tracks = {}, ext = {} }
  host.other_project = { kind = "project", file = "/elsewhere/other.rpp", tracks = {}, ext = {} }
  host.current = host.project
  host.tabs = { host.project } -- the open project tabs, in EnumProjects order

  local function guid()
    host.next_guid = host.next_guid + 1
    return string.format("{00000000-0000-0000-0000-%012d}", host.next_guid)
  end

  local function new_source(s)
    return { kind = "source", file = s.file or "", length = s.source_length or 0, channels = s.channels or 2,
             samplerate = s.samplerate or 48000,
             parent = s.section and { kind = "source", file = s.file } or nil }
  end

  for _, t in ipairs(scenario.tracks or {}) do
    local track = { kind = "track", name = t.name or "", items = {}, project = host.project, guid = t.guid or guid(),
                    razor = t.razor,
                    values = { I_FOLDERDEPTH = t.depth or 0, I_CUSTOMCOLOR = t.color or 0, I_FXEN = 1, D_VOL = 1,
                               D_PAN = 0 } }
    for k, v in pairs(t.values or {}) do track.values[k] = v end
    for _, it in ipairs(t.items or {}) do
      local item = { kind = "item", track = track, takes = {}, active = 1, selected = it.selected or false,
                     guid = it.guid or guid(), values = copy(ITEM_DEFAULTS) }
      item.values.D_POSITION = it.position or 0
      item.values.D_LENGTH = it.length or 1
      for k, v in pairs(it.values or {}) do item.values[k] = v end
      if it.take then
        local tk = it.take
        local take = { kind = "take", item = item, name = tk.name or "", midi = tk.midi or false,
                       fx = tk.fx or 0, envelopes = tk.envelopes or 0, stretch_markers = tk.stretch_markers or 0,
                       values = copy(TAKE_DEFAULTS), source = new_source(tk) }
        for k, v in pairs(tk.values or {}) do take.values[k] = v end
        item.takes[1] = take
      end
      track.items[#track.items + 1] = item
    end
    host.project.tracks[#host.project.tracks + 1] = track
  end

  local function project_of(proj)
    if proj == nil or proj == 0 then return host.current end
    -- a closed tab's ReaProject* is freed memory: REAPER crashes on it (ValidatePtr says false)
    if proj.deleted then error("reaper: a ReaProject* of a closed project tab (a stale pointer)", 3) end
    return proj
  end

  local function track_index(track)
    for i, t in ipairs(track.project.tracks) do
      if t == track then return i end
    end
    return nil
  end

  local function all_items(proj)
    local items = {}
    for _, t in ipairs(project_of(proj).tracks) do
      for _, item in ipairs(t.items) do items[#items + 1] = item end
    end
    return items
  end

  local function selected_items(proj)
    local items = {}
    for _, item in ipairs(all_items(proj)) do
      if item.selected then items[#items + 1] = item end
    end
    return items
  end

  local function live(ptr, what)
    if ptr.deleted then error("reaper." .. what .. ": the object no longer exists (a stale pointer)", 3) end
    return ptr
  end

  local function block(what, seconds)
    host.clock = host.clock + seconds
    host.cycle_cost = host.cycle_cost + seconds
    host.blocks[#host.blocks + 1] = { what = what, seconds = seconds }
  end

  local r = {}

  function r.GetOS() return scenario.os or "linux-x86_64" end
  function r.time_precise() return host.clock end
  function r.GetResourcePath() return scenario.resource_path or "/reaper/resources" end
  function r.EnumProjects(idx)
    if idx == -1 then return host.current, host.current.file end
    local project = host.tabs[idx + 1] -- the open tabs only: a closed one is never listed again
    if project then return project, project.file end
    return nil, ""
  end
  function r.GetProjectPath() return scenario.media_path or "/default/media" end
  function r.get_action_context()
    return true, host.running_script or "", 0, 55000, -1, -1, -1, ""
  end
  function r.set_action_options(flag)
    assert(host.running_script, "set_action_options outside a running script")
    host.action_options[host.running_script] = flag
  end

  -- The real thing, on this machine: the scripts list real folders and run real commands.
  local function quoted(path) return "'" .. path:gsub("'", "'\\''") .. "'" end
  local function listing(path, index, kind)
    local pipe = assert(io.popen("find " .. quoted(path) .. " -mindepth 1 -maxdepth 1 -type " .. kind
      .. " -printf '%f\\n' 2>/dev/null | sort"))
    local names = {}
    for line in pipe:lines() do names[#names + 1] = line end
    pipe:close()
    return names[index + 1] -- index -1 (REAPER: re-read the folder, invalidating its cache) lists nothing
  end
  function r.EnumerateFiles(path, index) return listing(path, index, "f") end
  function r.EnumerateSubdirectories(path, index) return listing(path, index, "d") end
  function r.ExecProcess(cmdline, timeout_ms)
    host.executed[#host.executed + 1] = cmdline
    local started = os.time()
    local pipe = io.popen("timeout " .. math.max(1, math.ceil(timeout_ms / 1000)) .. " " .. cmdline .. " 2>&1")
    if not pipe then return nil end
    local output = pipe:read("a")
    local _, _, code = pipe:close()
    -- synchronous: REAPER's UI waits for the process to end
    block("ExecProcess", math.max(PROCESS_START_COST, os.time() - started))
    return tostring(code or 0) .. "\n" .. output
  end
  function r.GetMousePosition() return 100, 200 end

  function r.CountSelectedMediaItems(proj) return #selected_items(proj) end
  function r.GetSelectedMediaItem(proj, i) return selected_items(proj)[i + 1] end
  function r.SelectAllMediaItems(proj, selected)
    for _, item in ipairs(all_items(proj)) do item.selected = selected end
  end
  function r.SetMediaItemSelected(item, selected) live(item, "SetMediaItemSelected").selected = selected end

  function r.CountTracks(proj) return #project_of(proj).tracks end
  function r.GetTrack(proj, idx) return project_of(proj).tracks[idx + 1] end
  function r.GetTrackGUID(track) return live(track, "GetTrackGUID").guid end
  function r.InsertTrackAtIndex(idx, _wantDefaults)
    local track = { kind = "track", name = "", items = {}, project = host.current, inserted = true, guid = guid(),
                    values = { I_FOLDERDEPTH = 0, I_CUSTOMCOLOR = 0 } }
    table.insert(host.current.tracks, idx + 1, track)
  end
  function r.GetSetMediaTrackInfo_String(track, key, value, set)
    live(track, "GetSetMediaTrackInfo_String")
    if key == "GUID" and not set then return true, track.guid end
    if key == "P_RAZOREDITS" and not set then return true, track.razor or "" end
    assert(key == "P_NAME", "fake supports P_NAME, GUID and P_RAZOREDITS, got " .. key)
    if set then track.name = value end
    return true, track.name
  end
  function r.GetMediaTrackInfo_Value(track, key)
    live(track, "GetMediaTrackInfo_Value")
    if key == "IP_TRACKNUMBER" then return track_index(track) + 0.0 end
    return (track.values[key] or 0) + 0.0
  end
  function r.SetMediaTrackInfo_Value(track, key, value) live(track, "SetMediaTrackInfo_Value").values[key] = value return true end
  function r.CountTrackMediaItems(track) return #live(track, "CountTrackMediaItems").items end
  function r.GetTrackMediaItem(track, i) return live(track, "GetTrackMediaItem").items[i + 1] end

  function r.GetMediaItem_Track(item) return live(item, "GetMediaItem_Track").track end
  function r.GetMediaItemInfo_Value(item, key) return (live(item, "GetMediaItemInfo_Value").values[key] or 0) + 0.0 end
  function r.SetMediaItemInfo_Value(item, key, value) live(item, "SetMediaItemInfo_Value").values[key] = value return true end
  function r.GetSetMediaItemInfo_String(item, key, _value, set)
    assert(key == "GUID" and not set, "fake reads GUID only")
    return true, live(item, "GetSetMediaItemInfo_String").guid
  end
  function r.GetActiveTake(item) return live(item, "GetActiveTake").takes[item.active] end
  function r.AddMediaItemToTrack(track)
    local item = { kind = "item", track = live(track, "AddMediaItemToTrack"), takes = {}, active = 1, selected = false,
                   guid = guid(), values = copy(ITEM_DEFAULTS) }
    track.items[#track.items + 1] = item
    return item
  end
  function r.AddTakeToMediaItem(item)
    local take = { kind = "take", item = live(item, "AddTakeToMediaItem"), name = "", midi = false, fx = 0,
                   envelopes = 0, stretch_markers = 0, values = copy(TAKE_DEFAULTS) }
    item.takes[#item.takes + 1] = take
    return take
  end

  function r.TakeIsMIDI(take) return take.midi end
  function r.GetMediaItemTake_Source(take) return take.source end
  function r.SetMediaItemTake_Source(take, source) take.source = source return true end
  function r.GetMediaItemTakeInfo_Value(take, key) return (take.values[key] or 0) + 0.0 end
  function r.SetMediaItemTakeInfo_Value(take, key, value) take.values[key] = value return true end
  function r.GetSetMediaItemTakeInfo_String(take, key, value, set)
    assert(key == "P_NAME", "fake supports P_NAME only")
    if set then take.name = value end
    return true, take.name
  end
  function r.TakeFX_GetCount(take) return take.fx end
  function r.CountTakeEnvelopes(take) return take.envelopes end
  function r.GetTakeNumStretchMarkers(take) return take.stretch_markers end

  function r.GetMediaSourceParent(source) return source.parent end
  function r.GetMediaSourceFileName(source) return source.file end
  function r.GetMediaSourceLength(source) return source.length + 0.0, false end
  function r.GetMediaSourceNumChannels(source) return source.channels end
  function r.GetMediaSourceSampleRate(source) return source.samplerate end
  function r.PCM_Source_CreateFromFile(path)
    return { kind = "source", file = path, length = 0, channels = 2, samplerate = 48000 }
  end

  function r.ValidatePtr2(proj, ptr, type_name)
    if ptr.deleted then return false end
    if type_name == "MediaTrack*" then return ptr.kind == "track" and ptr.project == project_of(proj) end
    if type_name == "MediaItem*" then return ptr.kind == "item" and ptr.track.project == project_of(proj) end
    return false
  end

  function r.GetSetProjectInfo(_proj, key, value, set)
    if set then host.project_info[key] = value end
    return (host.project_info[key] or 0) + 0.0
  end
  function r.GetSetProjectInfo_String(_proj, key, value, set)
    if key == "RENDER_TARGETS" then
      local targets = {}
      for _, target in ipairs(host.render_targets()) do targets[#targets + 1] = target.path end
      return true, table.concat(targets, ";")
    end
    if set then host.project_strings[key] = value end
    return true, host.project_strings[key] or ""
  end
  function r.GetSet_LoopTimeRange2(_proj, set, _loop, start, stop, _seek)
    if set then host.loop = { start, stop } end
    return host.loop[1] + 0.0, host.loop[2] + 0.0
  end

  -- The files a render of the selected media items writes: one per item (REAPER User Guide 7.70, 21.5:
  -- "Selected media items: outputs one file for each media item"), named by the pattern with `$item`
  -- standing for the take's name. Two items with one name would overwrite each other: an error here.
  function host.render_targets()
    local pattern, targets, seen = host.project_strings.RENDER_PATTERN, {}, {}
    for _, item in ipairs(selected_items(0)) do
      local take = item.takes[item.active]
      local name = pattern:gsub("%$item", function() return take and take.name or "" end)
      local path = host.project_strings.RENDER_FILE .. "/" .. name .. ".wav"
      if seen[path] then error("the render would write " .. path .. " twice (the pattern tells items apart only "
        .. "by $item)", 0) end
      seen[path] = true
      targets[#targets + 1] = { path = path, item = item }
    end
    return targets
  end

  function r.Main_OnCommand(command, _flag)
    host.commands[#host.commands + 1] = command
    if command == 42230 then
      local settings = host.project_info.RENDER_SETTINGS
      assert(settings & 32 == 32 and host.project_info.RENDER_BOUNDSFLAG == 4, "the fake renders selected media items only")
      local targets, seconds, rendered = host.render_targets(), 0, {}
      for _, target in ipairs(targets) do
        local item, track = target.item, target.item.track
        seconds = seconds + item.values.D_LENGTH
        -- what went into the file: the track's FX (on/off) and fader at the time of the render
        rendered[#rendered + 1] = { guid = item.guid, target = target.path,
                                    track_fx = (track.values.I_FXEN or 1) ~= 0,
                                    track_volume = track.values.D_VOL or 1, track_pan = track.values.D_PAN or 0,
                                    via_master = settings & 64 == 64 }
        local fixture = (scenario.render_fixtures or {})[item.guid] or scenario.render_fixture
        if fixture then
          local input = assert(io.open(fixture, "rb"))
          local data = input:read("a")
          input:close()
          local output = assert(io.open(target.path, "wb"))
          output:write(data)
          output:close()
        end
      end
      local selected = {}
      for _, target in ipairs(targets) do selected[#selected + 1] = target.item.guid end
      host.renders[#host.renders + 1] = { target = targets[1] and targets[1].path or "", items = Fake.array(rendered),
                                          numbers = copy(host.project_info), strings = copy(host.project_strings),
                                          selected = Fake.array(selected) }
      block("render", seconds / 20) -- an offline render, about 20x real time, with its dialog up
    end
  end

  function r.RecursiveCreateDirectory(path, _ignored)
    os.execute("mkdir -p '" .. path:gsub("'", "'\\''") .. "'")
    return 1
  end
  function r.file_exists(path)
    local f = io.open(path, "rb")
    if f then f:close() return true end
    return false
  end

  -- ShowMessageBox's documented answers per type: 0 OK, 1 OK/Cancel, 2 Abort/Retry/Ignore,
  -- 3 Yes/No/Cancel, 4 Yes/No, 5 Retry/Cancel; returns 1 OK, 2 Cancel, 3 Abort, 4 Retry, 5 Ignore, 6 Yes,
  -- 7 No. A dialog with a choice takes its answer from scenario.answers.dialogs (a test must give one).
  local DIALOG_ANSWERS = { [0] = { 1 }, [1] = { 1, 2 }, [2] = { 3, 4, 5 }, [3] = { 6, 7, 2 }, [4] = { 6, 7 },
                           [5] = { 4, 2 } }
  function r.ShowMessageBox(text, title, kind)
    local allowed = DIALOG_ANSWERS[kind]
    if not allowed then error("bad argument #3 to 'reaper.ShowMessageBox' (no message box type " .. kind .. ")", 2) end
    host.messages[#host.messages + 1] = { text = text, title = title, kind = kind }
    if kind == 0 then return 1 end
    local answer = table.remove(host.answers.dialogs, 1)
    assert(answer, "the scenario gives no answer for the dialog: " .. text)
    for _, ok in ipairs(allowed) do
      if ok == answer then return answer end
    end
    error("answer " .. tostring(answer) .. " is not one a type " .. kind .. " message box gives", 2)
  end
  function r.GetUserInputs(title, count, captions, defaults)
    host.input_captions[#host.input_captions + 1] = { title = title, count = count, captions = captions,
                                                      defaults = defaults }
    local answer = table.remove(host.answers.inputs, 1)
    if not answer then return false, "" end
    return answer[1], answer[2]
  end

  function r.GetExtState(section, key) return host.ext[section .. "/" .. key] or "" end
  function r.SetExtState(section, key, value, persist)
    host.ext[section .. "/" .. key] = value
    host.ext_persist[section .. "/" .. key] = persist or nil
  end
  function r.HasExtState(section, key) return host.ext[section .. "/" .. key] ~= nil end
  function r.DeleteExtState(section, key, _persist)
    host.ext[section .. "/" .. key] = nil
    host.ext_persist[section .. "/" .. key] = nil
  end

  -- ProjExtState: saved with the project. An empty value deletes the key; an empty key the section.
  local function ext_section(proj, section)
    local ext = project_of(proj).ext
    ext[section] = ext[section] or {}
    return ext[section]
  end
  function r.GetProjExtState(proj, section, key)
    local value = ext_section(proj, section)[key]
    return value and #value or 0, value or ""
  end
  function r.SetProjExtState(proj, section, key, value)
    if key == "" then
      project_of(proj).ext[section] = nil
      return 0
    end
    ext_section(proj, section)[key] = value ~= "" and value or nil
    return #value
  end
  function r.EnumProjExtState(proj, section, index)
    local keys = {}
    for key in pairs(ext_section(proj, section)) do keys[#keys + 1] = key end
    table.sort(keys)
    local key = keys[index + 1]
    if not key then return false, nil, nil end
    return true, key, ext_section(proj, section)[key]
  end

  function r.defer(fn)
    local instance = assert(host.running_instance, "defer outside a running script")
    instance.deferred[#instance.deferred + 1] = fn
    return true
  end
  function r.atexit(fn)
    local instance = assert(host.running_instance, "atexit outside a running script")
    instance.atexit[#instance.atexit + 1] = fn
    return true
  end

  function r.Undo_BeginBlock() host.undo_depth = host.undo_depth + 1 end
  function r.Undo_EndBlock(description, _flags)
    host.undo_depth = host.undo_depth - 1
    host.undo_blocks[#host.undo_blocks + 1] = description
  end
  function r.PreventUIRefresh(n) host.refresh_depth = host.refresh_depth + n end
  function r.UpdateArrange() end
  function r.TrackList_AdjustWindows(_minor) end
  function r.ShowConsoleMsg(text) io.stderr:write(text) end

  -- As in REAPER, a name that is not in the API reads as nil (scripts test for newer functions that
  -- way), and calling it fails; the fake also notes the name so a test can see it was looked for.
  local functions = {}
  for name, impl in pairs(r) do functions[name] = checked(name, impl) end
  for name in pairs(Fake.SIGNATURES) do assert(functions[name], "fake lacks reaper." .. name) end
  host.unknown_names = {}
  host.reaper = setmetatable({}, {
    __index = function(_, name)
      local fn = functions[name]
      if fn == nil then host.unknown_names[#host.unknown_names + 1] = tostring(name) end
      return fn
    end,
    __newindex = function() error("the reaper table is read-only", 2) end,
  })

  local g = { x = 0, y = 0, w = 0, h = 0, mouse_x = 0, mouse_y = 0, mouse_cap = 0 }
  host.gfx_table = g
  function g.init(name, w, h)
    host.gfx.open = true
    host.gfx.name = name
    g.w, g.h = w or 0, h or 0
    return 1
  end
  function g.quit() host.gfx.open = false end
  function g.showmenu(menu)
    host.menus[#host.menus + 1] = menu
    return table.remove(host.answers.menu, 1) or 0
  end
  function g.getchar()
    if not host.gfx.open or host.gfx.closed_by_user then return -1 end
    return 0
  end
  function g.set() end
  function g.rect() end
  function g.setfont() end
  function g.measurestr(text) return 7 * utf8.len(text), 15 end
  function g.drawstr(text) host.gfx.current[#host.gfx.current + 1] = text end
  function g.update()
    host.gfx.frames[#host.gfx.frames + 1] = host.gfx.current
    host.gfx.current = {}
  end
  for name in pairs(Fake.GFX_SIGNATURES) do g[name] = checked(name, assert(g[name]), Fake.GFX_SIGNATURES, "gfx.") end

  require("fake_reaper_runtime")(host, Fake, copy)

  Fake.UI_BUDGET = UI_BUDGET
  return host
end

return Fake
