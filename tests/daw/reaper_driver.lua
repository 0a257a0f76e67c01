-- Runs sam-bridge's REAPER scripts on the fake host, one command per stdin line (JSON), one JSON answer
-- per line on stdout. Usage: lua5.4 reaper_driver.lua <scripts/reaper dir> <scenario.json>
local scripts_dir, scenario_path = arg[1], arg[2]
local here = debug.getinfo(1, "S").source:match("^@?(.*[/\\])") or "./"
package.path = scripts_dir .. "/?.lua;" .. here .. "?.lua;" .. package.path

local core = require("sam_bridge_core")
local Fake = require("fake_reaper")
Fake.array = core.array

local function read(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

local scenario = assert(core.json_decode(read(scenario_path)))
local host = Fake.new(scenario)
reaper, gfx = host.reaper, host.gfx_table

local function state()
  return {
    tracks = host.snapshot(),
    messages = core.array(host.messages),
    menus = core.array(host.menus),
    executed = core.array(host.executed),
    input_captions = core.array(host.input_captions),
    undo_blocks = core.array(host.undo_blocks),
    undo_depth = host.undo_depth,
    refresh_depth = host.refresh_depth,
    commands = core.array(host.commands),
    renders = core.array(host.renders),
    project_info = host.project_info,
    project_strings = host.project_strings,
    ext = host.ext,
    pending = host.pending(),
    running = (function() local n = 0 for _ in pairs(host.instances) do n = n + 1 end return n end)(),
    relaunch_prompts = core.array(host.relaunch_prompts),
    blocks = core.array(host.blocks),
    longest_cycle = host.longest_cycle,
    proj_ext = host.project.ext,
    window_open = host.gfx.open,
    last_frame = core.array(host.gfx.frames[#host.gfx.frames] or {}),
    frame_count = #host.gfx.frames,
  }
end

local handlers = {}

function handlers.run(cmd)
  local ok, result = pcall(host.run_script, cmd.script)
  return { ok = ok, error = not ok and tostring(result) or nil, result = ok and result or nil }
end

function handlers.restart()
  host.restart()
  return { ok = true }
end

function handlers.tick(cmd)
  local ran = 0
  for _ = 1, cmd.n or 1 do
    if host.pending() == 0 then break end
    local ok, err = pcall(host.run_deferred, cmd.dt)
    if not ok then return { ok = false, error = tostring(err), ran = ran } end
    ran = ran + 1
  end
  return { ok = true, ran = ran, pending = host.pending() }
end

function handlers.state() return { ok = true, state = state() } end

function handlers.close_window()
  host.gfx.closed_by_user = true
  return { ok = true }
end

function handlers.click(cmd)
  gfx.mouse_x, gfx.mouse_y, gfx.mouse_cap = cmd.x, cmd.y, 1
  local result = handlers.tick({ n = 1 })
  gfx.mouse_cap = 0
  return result
end

local function open_tab(project)
  for _, tab in ipairs(host.tabs) do
    if tab == project then return end
  end
  host.tabs[#host.tabs + 1] = project
end

function handlers.switch_project(cmd)
  host.current = cmd.other and host.other_project or host.project
  open_tab(host.current)
  return { ok = true }
end

--- The user closes the project's tab (saved): the other project is current, the closed one's pointer dead.
function handlers.close_project()
  open_tab(host.other_project)
  for i, tab in ipairs(host.tabs) do
    if tab == host.project then table.remove(host.tabs, i) end
  end
  host.project.deleted = true
  host.current = host.other_project
  return { ok = true }
end

function handlers.delete_track(cmd)
  local track = table.remove(host.project.tracks, cmd.index + 1)
  track.deleted = true
  for _, item in ipairs(track.items) do item.deleted = true end
  return { ok = true }
end

function handlers.exit_scripts()
  host.exit_scripts()
  return { ok = true }
end

function handlers.eval(cmd)
  -- Runs a chunk of test code with `core`, `host` and the REAPER globals; returns what it returns.
  local chunk = assert(load(cmd.code, "test", "t", setmetatable({ core = core, host = host }, { __index = _G })))
  local ok, value = pcall(chunk)
  return { ok = ok, value = ok and value or nil, error = not ok and tostring(value) or nil }
end

io.stdout:setvbuf("line")
for line in io.lines() do
  local cmd, err = core.json_decode(line)
  local answer
  if type(cmd) ~= "table" or not handlers[cmd.cmd] then
    answer = { ok = false, error = "bad command: " .. tostring(err or line) }
  else
    answer = handlers[cmd.cmd](cmd)
  end
  local encoded_ok, text = pcall(core.json_encode, answer)
  if not encoded_ok then text = core.json_encode({ ok = false, error = "cannot encode answer: " .. text }) end
  io.stdout:write(text, "\n")
end
