-- @noindex
-- sam-bridge for REAPER: the items to separate: what an item and its take are (describe_item), the
-- selection, the project folder, and rendering those that cannot be sent as a file (in one render).
-- `require("sam_bridge_items")(H)` adds these functions to sam_bridge_reaper's table.

local core = require("sam_bridge_core")

local CMD_RENDER_MOST_RECENT = 42230 -- File: Render project, using the most recent render settings, auto-close

return function(H)

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
    elseif not desc.rendered_path or not H.exists(desc.rendered_path) then
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

end
