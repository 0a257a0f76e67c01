-- @noindex
-- sam-bridge for REAPER: everything that talks to REAPER (`reaper.*`, `gfx.*`): the actions, the daemon
-- and its presets, the menu; items (sam_bridge_items), stems (sam_bridge_stems) and the running session
-- (sam_bridge_session) add their functions to this table. The action scripts are thin wrappers around
-- `separate_selected_items()`, `collect_finished()` and `cancel_all()`; the logic lives in sam_bridge_core.
-- Lua has no sockets in stock REAPER, so we talk to the sam-bridge daemon through request/status files.

local core = require("sam_bridge_core")

local H = {}

local EXT = core.EXT_SECTION
local RENDER_FOLDER = "sam-bridge renders"
local PRESET_WAIT = 5 -- seconds to wait for the daemon's list of a project's presets
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
H.exists = exists

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

require("sam_bridge_items")(H)
require("sam_bridge_stems")(H)
require("sam_bridge_session")(H)
require("sam_bridge_estimate")(H)

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

--- The request for a described (and, if need be, rendered) item, or nil, message.
local function request_for(desc, what, project_dir, audition)
  if not desc.take then return nil, "the item is empty" end
  if desc.mode == "render" and not desc.rendered_path then
    return nil, "REAPER could not render it first (" .. tostring(desc.render_error) .. ")"
  end
  local ok, request = pcall(core.build_request, desc, what,
    { project_dir = project_dir, tag = "reaper:" .. (desc.guid or desc.request_name), audition = audition })
  if not ok then return nil, request end
  return request
end

--- Writes the request of an item (desc.request) whose cost the user knows; returns the job or nil, message.
local function start_job(info, desc, what, project)
  local name, request = desc.request_name, desc.request
  local encoded_ok, text = pcall(core.json_encode, request)
  if not encoded_ok then return nil, text end
  reaper.RecursiveCreateDirectory(info.requests_dir, 0)
  local base = core.join(info.requests_dir, name)
  local job = {
    name = name, request_path = base .. ".json", status_path = base .. ".status.json",
    cancel_path = base .. ".cancel", label = desc.label, what = what, mode = desc.mode,
    item = desc.item, item_guid = desc.guid, track = desc.track, track_guid = reaper.GetTrackGUID(desc.track),
    track_name = desc.track_name, project = project,
    position = desc.position, length = desc.length, take_values = desc.take_values,
    item_values = request.audition and { D_VOL = (desc.item_values or {}).D_VOL or 1 } or desc.item_values,
    mute_source = mute_source_enabled() and not request.audition, -- a trial never mutes the source
    as_takes = stems_as_takes_enabled(), partial = desc.part ~= nil or request.audition ~= nil,
    audition = request.audition, request_start = request.start or 0, sent_at = reaper.time_precise(),
  }
  H.persist(job) -- before the daemon can see the request: a paid job is never only in this script's memory
  local written, err = H.write_file_atomic(base .. ".json", text)
  if not written then
    H.forget(job)
    return nil, "could not write the request (" .. tostring(err) .. ")"
  end
  return job
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
  local session = H.new_session(info)
  session:reattach()
  local now = reaper.time_precise()
  for _, job in ipairs(session:open_jobs()) do session:poll(job, now) end
  return session
end

--- Action "sam-bridge: Separate selected items…" (or one preset's action, with `preset`); with
--- `audition` (seconds), "sam-bridge - Audition prompt on selection": only that long a window is sent.
function H.separate_selected_items(preset, audition)
  H.set_action_options()
  math.randomseed(os.time() + math.floor((reaper.time_precise() % 1) * 1e6))
  local info, err = H.find_daemon()
  local session = reattached_session(info or {})
  if not info then return H.alert(err) end
  local not_running = H.not_running_text(info)
  if not_running then return H.alert(not_running) end
  local items = H.targets()
  if #items == 0 then
    if session:worth_running() then session:run() end
    return H.alert("Select the items to separate first, then run this action again.")
  end
  local project = reaper.EnumProjects(-1)
  local project_dir = H.project_dir()

  local function send(what)
    local problems, ready = {}, {}
    for _, desc in ipairs(prepare_items(items, project_dir, info.requests_dir, problems)) do
      local request, problem = request_for(desc, what, project_dir, audition)
      desc.request = request
      if request then ready[#ready + 1] = desc else problems[#problems + 1] = (desc.label or "item") .. ": " .. problem end
    end
    H.estimate_then(info, ready, problems, function(approved, not_sent, summary) -- the cost first
      for _, desc in ipairs(approved) do
        local job, problem = start_job(info, desc, what, project)
        if job then session:add(job) else not_sent[#not_sent + 1] = (desc.label or "item") .. ": " .. problem end
      end
      session.summary = summary
      if #not_sent > 0 then H.alert("Some items were not sent:\n\n" .. table.concat(not_sent, "\n")) end
      if session:worth_running() then session:run() end
    end)
  end

  if preset then
    send({ preset = preset })
    return session
  end
  H.with_presets(info, project_dir, function(presets)
    local what = H.ask_what(presets)
    if what then send(what) elseif session:worth_running() then session:run() end
  end)
  return session
end

H.AUDITION_SECONDS = 10

--- Action "sam-bridge - Audition prompt on selection": the loudest AUDITION_SECONDS of each selected item
--- (or of its part in the time selection), for a cheap trial of a preset or prompt before the whole.
function H.audition_selection()
  return H.separate_selected_items(nil, H.AUDITION_SECONDS)
end

--- Action "sam-bridge - Collect finished stems": inserts the stems of requests saved in the open
--- projects, and keeps waiting for those still running.
function H.collect_finished()
  H.set_action_options()
  local info, err = H.find_daemon()
  local session = reattached_session(info or {})
  local inserted = 0
  for _, job in ipairs(session.jobs) do
    if job.inserted then inserted = inserted + 1 end
  end
  local waiting = #session:open_jobs()
  if waiting == 0 then
    if inserted == 0 then H.alert("Nothing to collect: this project has no sam-bridge requests waiting.") end
    if session.keep_open then session:run() end -- stems inserted with a warning: the window shows it
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
    local status = core.parse_status(H.read_status(job) or "")
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
