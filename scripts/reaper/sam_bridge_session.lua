-- @noindex
-- sam-bridge for REAPER: the requests of a project (saved in its ProjExtState, re-attached by any later
-- run) and the running session that follows them in a defer loop with its progress window.
-- `require("sam_bridge_session")(H)` adds H.persist, H.forget, H.saved_jobs and H.new_session.

local core = require("sam_bridge_core")

local EXT = core.EXT_SECTION
local PICKUP_TIMEOUT = 15 -- seconds before we say the daemon has not picked a request up
local PICKUP_NOTE = "sam-bridge has not picked this up yet"
local CLOSE_DELAY = 2.5 -- seconds the window stays up after the last job finished
local HEARTBEAT_CHECK = 1 -- seconds between looks at the daemon's heartbeat while waiting
local ARCHIVE_LOOK = 10 -- seconds between looks in requests/done/ for a status the daemon has archived
local ROW_CANCEL = "[ x ]"
local JOBS = "sam-bridge-jobs" -- ProjExtState section: one key per request, saved with the project

return function(H)

---------------------------------------------------------------------------------------------------
-- Requests kept in the project (ProjExtState), so a paid job outlives this script, the project tab
-- and REAPER itself: any later sam-bridge action re-attaches to them.
---------------------------------------------------------------------------------------------------

local RECORD_FIELDS = { "name", "status_path", "cancel_path", "label", "what", "mode", "item_guid", "track_guid",
                        "track_name", "position", "length", "item_values", "take_values", "mute_source",
                        "as_takes", "partial", "audition", "request_start" }

--- Whether the project (a ReaProject pointer) is still open in a tab: a closed one's pointer is dead.
local function project_open(project)
  local index = 0
  while true do
    local open = reaper.EnumProjects(index)
    if not open then return false end
    if open == project then return true end
    index = index + 1
  end
end

function H.persist(job)
  if not project_open(job.project) then return end -- closed: its saved file keeps the record it had
  local record = {}
  for _, key in ipairs(RECORD_FIELDS) do record[key] = job[key] end
  reaper.SetProjExtState(job.project, JOBS, job.name, core.json_encode(record))
end

--- Forgets a request; false when it was already gone (another instance took its stems in).
function H.forget(job)
  if not project_open(job.project) then return false end
  local _, value = reaper.GetProjExtState(job.project, JOBS, job.name)
  if value == "" then return false end
  reaper.SetProjExtState(job.project, JOBS, job.name, "")
  return true
end

--- The status of a request whose answer the daemon moved to `done/<date>/` a day after it ended
--- (REAPER or the project was closed meanwhile): its path and text, or nil.
local function archived_status(status_path)
  local folder, sep, file = status_path:match("^(.*)([/\\])([^/\\]+)$")
  if not folder then return nil end
  local done = folder .. sep .. "done"
  reaper.EnumerateSubdirectories(done, -1) -- REAPER caches folder listings: read this one afresh
  local days, i = {}, 0
  while true do
    local day = reaper.EnumerateSubdirectories(done, i)
    if not day then break end
    days[#days + 1] = day
    i = i + 1
  end
  table.sort(days, function(a, b) return a > b end) -- newest first: dated YYYY-MM-DD
  for _, day in ipairs(days) do
    local path = done .. sep .. day .. sep .. file
    local text = H.read_file(path)
    if text then return path, text end
  end
  return nil
end

--- The request's status text, or nil: beside the request, else (looked for now and then) where the
--- daemon archived it, which the job then follows.
function H.read_status(job)
  local text = H.read_file(job.status_path)
  if text then return text end
  local now = reaper.time_precise()
  if job.archive_looked_at and now - job.archive_looked_at < ARCHIVE_LOOK then return nil end
  job.archive_looked_at = now
  local path, archived = archived_status(job.status_path)
  if path then job.status_path = path end
  return archived
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

function H.new_session(info)
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

--- Whether the session has anything to follow or to show: open jobs, or a warning to be read.
function Session:worth_running()
  return #self:open_jobs() > 0 or self.keep_open == true
end

--- Picks up the requests saved in the open projects that this session does not follow yet.
function Session:reattach()
  for _, job in ipairs(H.saved_jobs(self.names)) do self:add(job) end
end

--- Whether a job's stems are ready (paid for) but not inserted yet: no cancel can take them back.
local function stems_ready(job)
  return job.status ~= nil and job.status.state == "done"
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
  for _, job in ipairs(self:open_jobs()) do -- finished ones are paid for: nothing left to cancel
    if not stems_ready(job) then lines[#lines + 1] = self.instance .. "\t" .. job.cancel_path end
  end
  reaper.SetExtState(EXT, "active", table.concat(lines, "\n"), false)
end

--- Cancels one request: the daemon cancels it at the service; its stems will not be collected. A
--- finished one (its stems ready, waiting for its project tab) is paid for: it stays saved for Collect,
--- and the window stays up to say so.
function Session:cancel(job)
  if stems_ready(job) then
    job.closed = true
    job.note = "stems ready, kept (paid for): in their project, run \"sam-bridge - Collect finished stems\""
    self.keep_open = true
    return
  end
  H.write_cancel_file(job.cancel_path)
  H.forget(job)
  job.closed = true
  job.note = "cancelled"
end

--- Cancels every open request and ends the session at once (the window stays up to say which finished
--- ones were kept).
function Session:cancel_all()
  for _, job in ipairs(self:open_jobs()) do self:cancel(job) end
  self.finished_at = -math.huge
end

function Session:poll(job, now)
  local text = H.read_status(job)
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
  if not project_open(job.project) then -- its tab was closed: the request stays saved in the project file
    job.closed = true
    if status.state == "done" then
      job.note = "its project was closed: open it and run Collect finished stems"
    elseif status.state == "failed" then
      job.note = "failed (its project was closed)"
      H.alert(job.label .. " could not be separated.\n\n" .. core.failure_text(status))
    else
      job.note = "its project was closed"
    end
    return
  end
  if status.state == "done" then
    local current = reaper.EnumProjects(-1)
    if current ~= job.project then
      job.note = "stems ready: switch back to their project tab to insert them"
      return
    end
    job.closed = true
    if not H.forget(job) then return end -- another sam-bridge action inserted them already
    local ok, err = H.insert_stems(job, status)
    if not ok then H.persist(job) end -- paid for: Collect finished stems tries again
    job.inserted = ok
    local warnings = core.flags_text(status)
    if ok and warnings ~= "" then
      job.note = "stems inserted — " .. warnings
      self.keep_open = true -- the user reads the warning and closes the window
    elseif ok then
      job.note = "stems inserted"
    else
      job.note = "could not insert the stems"
      H.alert(job.label .. ": " .. err .. "\n\nThe request stays saved in the project: run "
        .. "\"sam-bridge - Collect finished stems\" to insert them once this is fixed.")
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
  if self.summary then -- what the user agreed to pay
    gfx.x, gfx.y = 14, by
    gfx.drawstr(self.summary)
  end
  local clicked = gfx.mouse_cap & 1 == 1
  if clicked and not self.mouse_down then
    if gfx.mouse_x >= bx and gfx.mouse_y >= by then
      if open > 0 then
        self:cancel_all()
      else -- [ Close ]: also a window kept open for its warning, read now
        self.finished_at, self.keep_open = -math.huge, false
      end
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
    if not self.window_open or (now - self.finished_at >= CLOSE_DELAY and not self.keep_open) then
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

end
