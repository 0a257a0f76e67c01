-- @noindex
-- sam-bridge for REAPER: know before you pay. Before anything is sent, each item's request goes to the
-- daemon once with `"estimate_only": true` (answered in its status file: seconds, requests, cost, nothing
-- sent); the answers are read in a defer loop (never blocking REAPER), and above `confirm_above` the user
-- is asked first. `require("sam_bridge_estimate")(H)` adds H.estimate_then.

local core = require("sam_bridge_core")

local ANSWER_TIMEOUT = 15 -- seconds before we give up on an estimate (nothing is sent then)
local HEARTBEAT_CHECK = 1 -- seconds between looks at the daemon's heartbeat while waiting
local MB_YESNO, MB_YES = 4, 6 -- ShowMessageBox: type 4 = Yes/No, answer 6 = Yes

return function(H)

--- The estimate request of an item: its request plus `estimate_only`, under a name of its own (never the
--- real request's, which is written only once the user agreed).
local function write_estimate_request(info, desc)
  local request = {}
  for key, value in pairs(desc.request) do request[key] = value end
  request.estimate_only = true
  local ok, text = pcall(core.json_encode, request)
  if not ok then return nil, text end
  reaper.RecursiveCreateDirectory(info.requests_dir, 0)
  local base = core.join(info.requests_dir, desc.request_name .. ".estimate")
  desc.estimate_status_path = base .. ".status.json"
  return H.write_file_atomic(base .. ".json", text)
end

--- Reads an item's estimate answer: true once answered (desc.estimate or desc.estimate_error set).
local function read_answer(desc)
  local status = core.parse_status(H.read_file(desc.estimate_status_path) or "")
  if not status or not status.finished then return false end
  if status.state == "done" and status.estimate then
    desc.estimate = status.estimate
  else
    desc.estimate_error = core.failure_text(status)
  end
  return true
end

--- Asks the daemon what `descs` (each with .request and .request_name) would cost, then calls
--- `fn(approved, problems, summary)` with the items to send (all, or none when the user said no), the
--- items that cannot be sent and why, and the cost line to show. Gives up (sending nothing) when the
--- daemon stops or does not answer.
function H.estimate_then(info, descs, problems, fn)
  local asked = {}
  for _, desc in ipairs(descs) do
    local ok, err = write_estimate_request(info, desc)
    if ok then
      asked[#asked + 1] = desc
    else
      problems[#problems + 1] = desc.label .. ": could not ask for an estimate (" .. tostring(err) .. ")"
    end
  end
  if #asked == 0 then return fn({}, problems, nil) end
  local started = reaper.time_precise()
  local heartbeat_at = started

  local function decide()
    local ready, estimates = {}, {}
    for _, desc in ipairs(asked) do
      if desc.estimate then
        ready[#ready + 1] = desc
        estimates[#estimates + 1] = desc.estimate
      else
        problems[#problems + 1] = desc.label .. ": " .. tostring(desc.estimate_error)
      end
    end
    if #ready == 0 then return fn({}, problems, nil) end
    local summary, _, ask, limit = core.estimate_summary(estimates, tonumber(info.confirm_above))
    if ask then
      local answer = reaper.ShowMessageBox(summary .. ".\n\nThat is more than " .. limit .. " (confirm_above in "
        .. "sam-bridge's config). Send it to SAM Audio?", "sam-bridge: confirm the cost", MB_YESNO)
      if answer ~= MB_YES then
        return fn({}, problems, nil) -- nothing sent, nothing paid
      end
    end
    return fn(ready, problems, summary)
  end

  local function wait()
    local waiting = false
    for _, desc in ipairs(asked) do
      if not desc.estimate and not desc.estimate_error and not read_answer(desc) then waiting = true end
    end
    if not waiting then return decide() end
    local now = reaper.time_precise()
    if now - heartbeat_at >= HEARTBEAT_CHECK then
      heartbeat_at = now
      local not_running = H.not_running_text(info)
      if not_running then
        H.alert(not_running .. "\n\nNothing was sent.")
        return fn({}, {}, nil)
      end
    end
    if now - started > ANSWER_TIMEOUT then
      H.alert("sam-bridge did not answer with the cost within " .. ANSWER_TIMEOUT .. " s, so nothing was sent.\n\n"
        .. "Is it an older version without estimates? Update it (pip install -U sam-bridge) and try again.")
      return fn({}, {}, nil)
    end
    reaper.defer(wait)
  end
  reaper.defer(wait)
end

end
