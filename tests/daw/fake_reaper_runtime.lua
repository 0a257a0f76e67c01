-- The REAPER stand-in's run time (used by fake_reaper.lua): scripts and their instances (one per action,
-- the relaunch prompt, set_action_options), `defer` cycles with the UI-thread clock, `atexit`, a
-- simulated REAPER restart, and a plain-data snapshot of the project for tests.
-- Sources: REAPER's ReaScript API reference (reaper.fm/sdk/reascript/reascripthelp.html): `defer` runs a
-- function once on a later UI cycle, `atexit` when the script ends, `set_action_options` (7.03+: 1 ends
-- a running instance on a re-run, 2 relaunches it, 4 sets the toggle); and REAPER's own behaviour when an
-- action that is still running is run again ("ReaScript task control" dialog: terminate, or run a new
-- instance), which the relaunch prompt models.

return function(host, Fake, copy)
  ---------------------------------------------------------------------------------------------------
  -- Scripts, instances and UI cycles
  ---------------------------------------------------------------------------------------------------

  local function within(script, instance, fn, ...)
    host.running_script, host.running_instance = script, instance
    host.cycle_cost = 0
    local ok, err = pcall(fn, ...)
    host.longest_cycle = math.max(host.longest_cycle, host.cycle_cost)
    host.running_script, host.running_instance = nil, nil
    if not ok then error(err, 0) end
  end

  local function end_instance(script)
    local instance = host.instances[script]
    if not instance then return end
    host.instances[script] = nil
    for _, fn in ipairs(instance.atexit) do within(script, instance, fn) end
  end

  -- Each ReaScript runs in a Lua state of its own in REAPER: modules it requires are loaded afresh.
  local baseline_modules = {}
  for name in pairs(package.loaded) do baseline_modules[name] = true end

  --- Runs an action script as REAPER does: a second launch while one runs meets the relaunch rule.
  function host.run_script(script)
    for name in pairs(package.loaded) do
      if not baseline_modules[name] then package.loaded[name] = nil end
    end
    if host.instances[script] then
      local flag = host.action_options[script] or 0
      if flag & 1 == 1 then
        end_instance(script)
        if flag & 2 == 0 then return "terminated" end
      else
        host.relaunch_prompts[#host.relaunch_prompts + 1] = script
        local answer = host.answers.relaunch
        if answer == "abort" then return "aborted" end
        if answer == "terminate" then
          end_instance(script)
          return "terminated"
        end
        -- "new": a second instance beside the first (the fake keeps one list per script)
      end
    end
    local instance = host.instances[script] or { deferred = {}, atexit = {} }
    host.instances[script] = instance
    within(script, instance, dofile, script)
    if #instance.deferred == 0 then end_instance(script) end
    return "ran"
  end

  --- One REAPER UI cycle: every instance's deferred functions run once.
  function host.run_deferred(dt)
    host.clock = host.clock + (dt or 0.05)
    local scripts = {}
    for script in pairs(host.instances) do scripts[#scripts + 1] = script end
    table.sort(scripts)
    for _, script in ipairs(scripts) do
      local instance = host.instances[script]
      local queue = instance.deferred
      instance.deferred = {}
      for _, fn in ipairs(queue) do within(script, instance, fn) end
      if #instance.deferred == 0 then end_instance(script) end
    end
    return host.pending()
  end

  function host.pending()
    local count = 0
    for _, instance in pairs(host.instances) do count = count + #instance.deferred end
    return count
  end

  function host.exit_scripts()
    local scripts = {}
    for script in pairs(host.instances) do scripts[#scripts + 1] = script end
    for _, script in ipairs(scripts) do end_instance(script) end
  end

  --- REAPER quits (the project saved) and starts again with the project: scripts end, unpersisted
  --- ExtState is gone, every pointer is new.
  function host.restart()
    host.exit_scripts()
    for key in pairs(host.ext) do
      if not host.ext_persist[key] then host.ext[key] = nil end
    end
    local old = host.project
    local project = { kind = "project", file = old.file, tracks = {}, ext = old.ext }
    for _, t in ipairs(old.tracks) do
      local track = copy(t)
      track.project, track.items = project, {}
      for _, it in ipairs(t.items) do
        local item = copy(it)
        item.track, item.takes = track, {}
        for _, tk in ipairs(it.takes) do
          local take = copy(tk)
          take.item = item
          item.takes[#item.takes + 1] = take
          tk.deleted = true
        end
        track.items[#track.items + 1] = item
        it.deleted = true
      end
      project.tracks[#project.tracks + 1] = track
      t.deleted = true
    end
    old.deleted = true
    host.project, host.current = project, project
    host.tabs = { project }
    host.gfx = { open = false, closed_by_user = false, frames = {}, current = {} }
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

end
