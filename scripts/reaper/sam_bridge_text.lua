-- @noindex
-- sam-bridge for REAPER: what the user reads: the preset menu, status files, track names and progress
-- lines. Plain Lua; `require("sam_bridge_text")(core)` adds these functions to sam_bridge_core.

return function(M)

---------------------------------------------------------------------------------------------------
-- Presets and the menu
---------------------------------------------------------------------------------------------------

--- Presets from presets.json text: a list of {name, description, stems}. Unreadable -> empty list, message.
function M.parse_presets(text)
  local doc, err = M.json_decode(text or "")
  if type(doc) ~= "table" or type(doc.presets) ~= "table" then
    return {}, "sam-bridge's preset list could not be read" .. (err and (" (" .. err .. ")") or "")
  end
  local presets = {}
  for _, p in ipairs(doc.presets) do
    if type(p) == "table" and type(p.name) == "string" and p.name ~= "" then
      local stems = nil
      if type(p.stems) == "table" and #p.stems > 0 then stems = p.stems end
      presets[#presets + 1] = {
        name = p.name,
        description = type(p.description) == "string" and p.description or "",
        stems = stems,
      }
    end
  end
  return presets
end

--- Where a project keeps presets of its own (the daemon reads the same folder for its requests).
function M.project_presets_folder(project_dir)
  return M.join(project_dir, "sam-bridge", "presets")
end

--- The problems `sam-bridge presets list --json` reports (broken files), as "file:line: field: message".
function M.preset_problems(text)
  local doc = M.json_decode(text or "")
  local lines = {}
  if type(doc) == "table" and type(doc.problems) == "table" then
    for _, problem in ipairs(doc.problems) do
      if type(problem) == "table" then
        local where = tostring(problem.file or "?") .. (problem.line and (":" .. tostring(problem.line)) or "")
        lines[#lines + 1] = where .. ": " .. tostring(problem.field or "") .. ": " .. tostring(problem.message or "")
      end
    end
  end
  return lines
end

-- gfx.showmenu gives '!', '#', '>', '<' and '|' special meaning; keep item text plain.
local function menu_text(text)
  text = text:gsub("|", "/"):gsub("^[!#><]+", "")
  return text
end

--- Menu string for gfx.showmenu and what each numbered choice means.
--- Choices: {kind="preset", name=...}, {kind="prompt"}, {kind="toggle_mute"}.
function M.build_preset_menu(presets, mute_source, recent_prompts, stems_as_takes)
  -- gfx.showmenu numbers every field but separators, greyed ones included: keep `actions` parallel.
  local items, actions = {}, {}
  local function add(text, action)
    items[#items + 1] = text
    actions[#actions + 1] = action or { kind = "none" }
  end
  if #presets == 0 then
    add("#No presets found (is sam-bridge running?)")
  end
  for _, p in ipairs(presets) do
    local label = menu_text(p.name)
    if p.stems then label = label .. "  (" .. #p.stems .. " stems)" end
    add(label, { kind = "preset", name = p.name })
  end
  items[#items] = items[#items] .. "|" -- an empty field: a separator
  add("Describe the sound…", { kind = "prompt" })
  for _, prompt in ipairs(recent_prompts or {}) do
    add("Again: " .. menu_text(M.what_label({ prompt = prompt })), { kind = "recent", prompt = prompt })
  end
  items[#items] = items[#items] .. "|"
  add((mute_source and "!" or "") .. "Mute source items when the stems arrive", { kind = "toggle_mute" })
  add((stems_as_takes and "!" or "") .. "Stems as takes of the source item (not new tracks)",
    { kind = "toggle_takes" })
  return table.concat(items, "|"), actions
end

M.RECENT_PROMPTS = 5

--- The remembered prompts (newest first, one a line) with `prompt` put in front, at most RECENT_PROMPTS.
function M.remember_prompt(text, prompt)
  local list, seen = { prompt }, { [prompt] = true }
  for line in (text or ""):gmatch("[^\n]+") do
    if not seen[line] and #list < M.RECENT_PROMPTS then
      list[#list + 1] = line
      seen[line] = true
    end
  end
  return list
end

---------------------------------------------------------------------------------------------------
-- Status files
---------------------------------------------------------------------------------------------------

M.FINISHED = { done = true, failed = true, cancelled = true }
M.STATE_WORDS = {
  queued = "queued", waiting = "waiting", preparing = "preparing", uploading = "uploading",
  submitted = "sent", running = "separating", downloading = "downloading", conforming = "lining up",
  done = "done", failed = "failed", cancelled = "cancelled",
}

--- Reads a status file's text. Returns a table or nil, message (a half-seen file is simply retried).
--- Result: {state, progress (0..1), message, error, job_id, tag, manifest, finished, stems = {{label, path}...}}.
function M.parse_status(text)
  local doc, err = M.json_decode(text)
  if type(doc) ~= "table" then return nil, err or "status is not a JSON object" end
  local state = type(doc.state) == "string" and doc.state or "unknown"
  local progress = tonumber(doc.progress) or 0
  if progress ~= progress then progress = 0 end
  progress = math.max(0, math.min(1, progress))
  local stems = {}
  if type(doc.stems) == "table" then
    for _, label in ipairs(M.keys_in_order(doc.stems)) do
      local path = doc.stems[label]
      if type(path) == "string" and path ~= "" then stems[#stems + 1] = { label = label, path = path } end
    end
  end
  local function text_or_nil(v) return type(v) == "string" and v ~= "" and v or nil end
  return {
    state = state,
    progress = progress,
    message = text_or_nil(doc.message) or "",
    error = text_or_nil(doc.error),
    job_id = text_or_nil(doc.job_id),
    tag = text_or_nil(doc.tag),
    manifest = text_or_nil(doc.manifest),
    flags = type(doc.flags) == "table" and doc.flags or {},
    warnings = type(doc.warnings) == "table" and doc.warnings or nil, -- nil: a daemon from before them
    flag_words = type(doc.flag_words) == "table" and doc.flag_words or {},
    eta = type(doc.eta_seconds) == "number" and doc.eta_seconds >= 0 and doc.eta_seconds or nil,
    estimate = type(doc.estimate) == "table" and doc.estimate or nil,
    finished = M.FINISHED[state] == true,
    stems = stems,
  }
end

--- What a failed status tells the musician.
function M.failure_text(status)
  local text = status.error or status.message
  if not text or text == "" then text = "sam-bridge did not say why." end
  return text
end

---------------------------------------------------------------------------------------------------
-- Naming and display
---------------------------------------------------------------------------------------------------

local function shorten(text, limit)
  if utf8.len(text) and utf8.len(text) > limit then
    return text:sub(1, utf8.offset(text, limit) - 1) .. "…"
  end
  return text
end

--- The preset name, or the prompt in quotes (shortened) when there is no preset.
function M.what_label(what)
  if what.preset and what.preset ~= "" then return what.preset end
  local prompt = (what.prompt or ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  return "\"" .. shorten(prompt, 32) .. "\""
end

--- "<track> · <preset> (<stem>)", e.g. "Guitar · piano (target)".
function M.track_name(source_track_name, what, stem_label)
  return string.format("%s · %s (%s)", source_track_name, M.what_label(what), stem_label)
end

--- Name REAPER shows for a track without one ("Track 3").
function M.fallback_track_name(name, number)
  if name and name:match("%S") then return name end
  return "Track " .. tostring(math.floor(number))
end

--- One progress line for the window: "Guitar 01 · piano — separating 45% — message".
function M.progress_line(job, now)
  local parts = { job.label }
  local state = job.status and job.status.state or job.local_state or "sent"
  local word = M.STATE_WORDS[state] or state
  if job.status and not job.status.finished then
    local progress = job.status.progress
    word = string.format("%s %d%%", word, math.floor(progress * 100 + 0.5))
    local left = job.status.eta -- the daemon's own ETA; else a rough one from the pace so far
    if not left and now and job.sent_at and progress >= 0.05 and progress < 1 then
      left = (now - job.sent_at) * (1 - progress) / progress
    end
    if left then
      word = word .. (left < 60 and string.format(", about %d s left", math.ceil(left))
        or string.format(", about %d min left", math.ceil(left / 60)))
    end
  end
  parts[#parts + 1] = word
  local note = job.note or (job.status and job.status.message) or ""
  if note ~= "" then parts[#parts + 1] = note end
  return table.concat(parts, " — ")
end


---------------------------------------------------------------------------------------------------
-- Estimates and quality flags
---------------------------------------------------------------------------------------------------

--- "$0.05" (USD) or "0.05 EUR".
function M.money(amount, currency)
  if currency == nil or currency == "USD" then return string.format("$%.2f", amount) end
  return string.format("%.2f %s", amount, currency)
end

M.DEFAULT_CONFIRM_ABOVE = 1.0

--- What the estimates (status `estimate` objects, one per item) add up to: the text to show, the total,
--- and whether to ask first (the total above `confirm_above`, or the daemon says so for one item).
function M.estimate_summary(estimates, confirm_above)
  local total, seconds, requests, whole, currency, ask = 0, 0, 0, 0, nil, false
  for _, e in ipairs(estimates) do
    total = total + (tonumber(e.estimated_cost) or 0)
    seconds = seconds + (tonumber(e.seconds) or 0)
    requests = requests + (tonumber(e.requests) or 0)
    whole = whole + (type(e.whole_cost) == "number" and e.whole_cost or 0)
    currency = currency or (type(e.currency) == "string" and e.currency or nil)
    if e.needs_confirmation == true then ask = true end
    if type(e.confirm_above) == "number" then confirm_above = e.confirm_above end
  end
  confirm_above = confirm_above or M.DEFAULT_CONFIRM_ABOVE
  if total > confirm_above + 1e-9 then ask = true end
  local text = string.format("%s for %s (%.1f s, %d request%s)", M.money(total, currency),
    #estimates == 1 and "1 item" or (#estimates .. " items"), seconds, requests, requests == 1 and "" or "s")
  if whole > 0 then text = text .. "; the whole part would cost " .. M.money(whole, currency) end
  return "Estimated cost: " .. text, total, ask, M.money(confirm_above, currency)
end

-- The quality flags: the daemon's status says which are warnings (`warnings`) and what each means
-- (`flag_words`, from bridge/common/flags.py); a daemon from before those fields sends neither, and then
-- every flag but these notes (bridge/common/flags.py's NOTES: the stems are right) is a warning.
M.NOTES_OF_OLDER_DAEMONS = { ["audition"] = true, ["drift-corrected"] = true, ["span-cut-at-end"] = true }

--- The warnings of a finished job's status, in the daemon's words ("" when none; a flag it has no words
--- for is shown as it is). Notes are no warnings.
function M.flags_text(status)
  local warnings = status.warnings
  if not warnings then
    warnings = {}
    for _, flag in ipairs(status.flags or {}) do
      if not M.NOTES_OF_OLDER_DAEMONS[flag] then warnings[#warnings + 1] = flag end
    end
  end
  local words = {}
  for _, flag in ipairs(warnings) do
    if type(flag) == "string" then
      local said = (status.flag_words or {})[flag]
      words[#words + 1] = type(said) == "string" and said ~= "" and said or flag
    end
  end
  if #words == 0 then return "" end
  return "check: " .. table.concat(words, "; ")
end

end
