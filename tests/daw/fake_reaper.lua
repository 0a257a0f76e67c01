-- A small stand-in for the REAPER host (the `reaper` and `gfx` tables ReaScript gets), built from a
-- scenario: tracks, items, takes and their sources. It records what a script does to the project
-- (tracks inserted, items added, render settings, message boxes, undo blocks) so tests can check it.
-- It stands in for REAPER only; the sam-bridge scripts under test run unchanged on top of it.

local Fake = {}

-- Set by the driver (core.array) so empty lists encode as [] in snapshots.
Fake.array = function(t) return t end

local function copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end

local TAKE_DEFAULTS = { D_PLAYRATE = 1, D_VOL = 1, D_PAN = 0, D_PITCH = 0, D_STARTOFFS = 0, I_CHANMODE = 0 }
local ITEM_DEFAULTS = { D_VOL = 1, B_MUTE = 0 }

function Fake.new(scenario)
  local host = {
    scenario = scenario,
    clock = 1000.0,
    deferred = {},
    atexit = {},
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
    project_info = { RENDER_SETTINGS = 0, RENDER_BOUNDSFLAG = 1, RENDER_CHANNELS = 2, RENDER_SRATE = 44100,
                     RENDER_TAILFLAG = 18, RENDER_TAILMS = 1000, RENDER_ADDTOPROJ = 1, RENDER_NORMALIZE = 5,
                     RENDER_DITHER = 3, RENDER_STARTPOS = 0, RENDER_ENDPOS = 0 },
    project_strings = { RENDER_FILE = "/user/renders", RENDER_PATTERN = "$project", RENDER_FORMAT = "bDNwbQ==",
                        RENDER_FORMAT2 = "Y2FsZg==" },
    gfx = { open = false, closed_by_user = false, frames = {}, current = {} },
    answers = { menu = copy(scenario.answers and scenario.answers.menu),
                inputs = copy(scenario.answers and scenario.answers.inputs) },
    next_guid = 1,
  }
  for k, v in pairs(scenario.project_info or {}) do host.project_info[k] = v end
  for k, v in pairs(scenario.project_strings or {}) do host.project_strings[k] = v end
  for k, v in pairs(scenario.ext_state or {}) do host.ext[k] = v end

  host.project = { kind = "project", file = scenario.project_file or "", tracks = {} }
  host.other_project = { kind = "project", file = "/elsewhere/other.rpp", tracks = {} }
  host.current = host.project

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
    local track = { kind = "track", name = t.name or "", items = {}, project = host.project,
                    values = { I_FOLDERDEPTH = t.depth or 0, I_CUSTOMCOLOR = t.color or 0 } }
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

  local r = {}
  host.reaper = r

  function r.GetOS() return scenario.os or "linux-x86_64" end
  function r.time_precise() return host.clock end
  function r.EnumProjects(idx)
    if idx == -1 then return host.current, host.current.file end
    if idx == 0 then return host.project, host.project.file end
    return nil, ""
  end
  function r.GetProjectPath() return scenario.media_path or "/default/media" end

  -- The real thing, on this machine: the scripts list real folders and run real commands.
  local function quoted(path) return "'" .. path:gsub("'", "'\\''") .. "'" end
  function r.EnumerateFiles(path, index)
    local pipe = io.popen("find " .. quoted(path) .. " -mindepth 1 -maxdepth 1 -type f -printf '%f\\n' "
      .. "2>/dev/null | sort")
    local names = {}
    for line in pipe:lines() do names[#names + 1] = line end
    pipe:close()
    return names[index + 1]
  end
  -- REAPER (not Windows) splits the line itself, with no shell: words apart at spaces, a word wrapped
  -- in ' " or ` taken as it is. `exec_via_shell` gives the line to /bin/sh instead, the other reading.
  local function reaper_words(cmdline)
    local words, i = {}, 1
    while true do
      i = cmdline:find("%S", i)
      if not i then return words end
      local quote = cmdline:sub(i, i)
      if quote == "'" or quote == '"' or quote == "`" then
        local close = cmdline:find(quote, i + 1, true) or (#cmdline + 1)
        words[#words + 1] = cmdline:sub(i + 1, close - 1)
        i = close + 1
      else
        local stop = cmdline:find("%s", i) or (#cmdline + 1)
        words[#words + 1] = cmdline:sub(i, stop - 1)
        i = stop
      end
    end
  end
  function r.ExecProcess(cmdline, timeout_ms)
    host.executed[#host.executed + 1] = cmdline
    local run = cmdline
    if not scenario.exec_via_shell then
      local words = {}
      for k, word in ipairs(reaper_words(cmdline)) do words[k] = quoted(word) end
      run = table.concat(words, " ")
    end
    local pipe = io.popen("timeout " .. math.max(1, math.ceil(timeout_ms / 1000)) .. " " .. run .. " 2>&1")
    if not pipe then return nil end
    local output = pipe:read("a")
    local _, _, code = pipe:close()
    return tostring(code or 0) .. "\n" .. output
  end
  function r.GetMousePosition() return 100, 200 end

  function r.CountSelectedMediaItems(proj) return #selected_items(proj) end
  function r.GetSelectedMediaItem(proj, i) return selected_items(proj)[i + 1] end
  function r.SelectAllMediaItems(proj, selected)
    for _, item in ipairs(all_items(proj)) do item.selected = selected end
  end
  function r.SetMediaItemSelected(item, selected) item.selected = selected end

  function r.CountTracks(proj) return #project_of(proj).tracks end
  function r.GetTrack(proj, idx) return project_of(proj).tracks[idx + 1] end
  function r.InsertTrackAtIndex(idx, _wantDefaults)
    local track = { kind = "track", name = "", items = {}, project = host.current, inserted = true,
                    values = { I_FOLDERDEPTH = 0, I_CUSTOMCOLOR = 0 } }
    table.insert(host.current.tracks, idx + 1, track)
  end
  function r.GetSetMediaTrackInfo_String(track, key, value, set)
    assert(key == "P_NAME", "fake supports P_NAME only, got " .. key)
    if set then track.name = value end
    return true, track.name
  end
  function r.GetMediaTrackInfo_Value(track, key)
    if key == "IP_TRACKNUMBER" then return track_index(track) + 0.0 end
    return track.values[key] or 0
  end
  function r.SetMediaTrackInfo_Value(track, key, value) track.values[key] = value return true end

  function r.GetMediaItem_Track(item) return item.track end
  function r.GetMediaItemInfo_Value(item, key) return item.values[key] or 0 end
  function r.SetMediaItemInfo_Value(item, key, value) item.values[key] = value return true end
  function r.GetSetMediaItemInfo_String(item, key, _value, set)
    assert(key == "GUID" and not set, "fake reads GUID only")
    return true, item.guid
  end
  function r.GetActiveTake(item) return item.takes[item.active] end
  function r.AddMediaItemToTrack(track)
    local item = { kind = "item", track = track, takes = {}, active = 1, selected = false, guid = guid(),
                   values = copy(ITEM_DEFAULTS) }
    track.items[#track.items + 1] = item
    return item
  end
  function r.AddTakeToMediaItem(item)
    local take = { kind = "take", item = item, name = "", midi = false, fx = 0, envelopes = 0,
                   stretch_markers = 0, values = copy(TAKE_DEFAULTS) }
    item.takes[#item.takes + 1] = take
    return take
  end

  function r.TakeIsMIDI(take) return take.midi end
  function r.GetMediaItemTake_Source(take) return take.source end
  function r.SetMediaItemTake_Source(take, source) take.source = source return true end
  function r.GetMediaItemTakeInfo_Value(take, key) return take.values[key] or 0 end
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
  function r.GetMediaSourceLength(source) return source.length, false end
  function r.GetMediaSourceNumChannels(source) return source.channels end
  function r.GetMediaSourceSampleRate(source) return source.samplerate end
  function r.PCM_Source_CreateFromFile(path)
    return { kind = "source", file = path, length = 0, channels = 2, samplerate = 48000 }
  end

  function r.ValidatePtr2(proj, ptr, type_name)
    if type(ptr) ~= "table" or ptr.deleted then return false end
    if type_name == "MediaTrack*" then return ptr.kind == "track" and ptr.project == project_of(proj) end
    if type_name == "MediaItem*" then return ptr.kind == "item" and ptr.track.project == project_of(proj) end
    return false
  end

  function r.GetSetProjectInfo(_proj, key, value, set)
    if set then host.project_info[key] = value end
    return host.project_info[key] or 0
  end
  function r.GetSetProjectInfo_String(_proj, key, value, set)
    if key == "RENDER_TARGETS" then
      return true, host.project_strings.RENDER_FILE .. "/" .. host.project_strings.RENDER_PATTERN .. ".wav"
    end
    if set then host.project_strings[key] = value end
    return true, host.project_strings[key] or ""
  end

  function r.Main_OnCommand(command, _flag)
    host.commands[#host.commands + 1] = command
    if command == 42230 then
      local target = host.project_strings.RENDER_FILE .. "/" .. host.project_strings.RENDER_PATTERN .. ".wav"
      local selected = {}
      for _, item in ipairs(selected_items(0)) do selected[#selected + 1] = item.guid end
      host.renders[#host.renders + 1] = { target = target, numbers = copy(host.project_info),
                                          strings = copy(host.project_strings), selected = selected }
      local fixture = scenario.render_fixture
      if fixture and #selected == 1 then
        local input = assert(io.open(fixture, "rb"))
        local data = input:read("a")
        input:close()
        local output = assert(io.open(target, "wb"))
        output:write(data)
        output:close()
      end
    end
  end

  function r.RecursiveCreateDirectory(path)
    os.execute("mkdir -p '" .. path:gsub("'", "'\\''") .. "'")
    return 1
  end
  function r.file_exists(path)
    local f = io.open(path, "rb")
    if f then f:close() return true end
    return false
  end

  function r.ShowMessageBox(text, title, kind)
    host.messages[#host.messages + 1] = { text = text, title = title, kind = kind }
    return 1
  end
  function r.GetUserInputs(title, count, captions, defaults)
    host.input_captions[#host.input_captions + 1] = { title = title, count = count, captions = captions,
                                                      defaults = defaults }
    local answer = table.remove(host.answers.inputs, 1)
    if not answer then return false, "" end
    return answer[1], answer[2]
  end

  function r.GetExtState(section, key) return host.ext[section .. "/" .. key] or "" end
  function r.SetExtState(section, key, value, _persist) host.ext[section .. "/" .. key] = value end
  function r.HasExtState(section, key) return host.ext[section .. "/" .. key] ~= nil end
  function r.DeleteExtState(section, key) host.ext[section .. "/" .. key] = nil end

  function r.defer(fn) host.deferred[#host.deferred + 1] = fn end
  function r.atexit(fn) host.atexit[#host.atexit + 1] = fn end

  function r.Undo_BeginBlock() host.undo_depth = host.undo_depth + 1 end
  function r.Undo_EndBlock(description)
    host.undo_depth = host.undo_depth - 1
    host.undo_blocks[#host.undo_blocks + 1] = description
  end
  function r.PreventUIRefresh(n) host.refresh_depth = host.refresh_depth + n end
  function r.UpdateArrange() end
  function r.TrackList_AdjustWindows() end
  function r.ShowConsoleMsg(text) io.stderr:write(text) end

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

  --- Runs the deferred functions once (what one REAPER UI cycle does).
  function host.run_deferred(dt)
    host.clock = host.clock + (dt or 0.05)
    local queue = host.deferred
    host.deferred = {}
    for _, fn in ipairs(queue) do fn() end
    return #host.deferred
  end

  function host.exit_scripts()
    for _, fn in ipairs(host.atexit) do fn() end
    host.atexit, host.deferred = {}, {}
  end

  --- The project as plain data, for the test to check.
  function host.snapshot()
    local tracks = {}
    for i, t in ipairs(host.project.tracks) do
      local items = {}
      for _, item in ipairs(t.items) do
        local takes = {}
        for _, take in ipairs(item.takes) do
          takes[#takes + 1] = { name = take.name, source = take.source and take.source.file or "",
                                values = take.values }
        end
        items[#items + 1] = { guid = item.guid, values = item.values, takes = Fake.array(takes),
                              selected = item.selected }
      end
      tracks[i] = { name = t.name, values = t.values, items = Fake.array(items), inserted = t.inserted or false }
    end
    return Fake.array(tracks)
  end

  return host
end

return Fake
