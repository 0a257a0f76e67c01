-- @noindex
-- sam-bridge for REAPER: finished stems into the project, as new tracks under the source track or as
-- takes of the source item, in one undo block. `require("sam_bridge_stems")(H)` adds them to H.

local core = require("sam_bridge_core")

local CMD_BUILD_PEAKS = 40047 -- Peaks: Build any missing peaks

return function(H)

---------------------------------------------------------------------------------------------------
-- Stems -> tracks
---------------------------------------------------------------------------------------------------

--- Inserts one track per stem right under the source track, items at the source item's position and
--- length, in one undo block. Returns true or nil, message.
function H.insert_stems(job, status)
  for _, stem in ipairs(status.stems) do
    if not H.exists(stem.path) then
      return nil, "sam-bridge says the stems are ready, but this file is missing:\n" .. stem.path
    end
  end
  if #status.stems == 0 then return nil, "sam-bridge finished but sent no stems." end
  if job.audition then
    local placed, err = H.place_audition(job, status)
    if not placed then return nil, err end
  end

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
      reaper.GetSetMediaTrackInfo_String(track, "P_NAME", core.track_name(job.track_name, job.what,
        job.audition and ("audition " .. stem.label) or stem.label), true)
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

--- An audition's stems cover the window the daemon chose (the loudest of the part): its manifest says
--- where it starts in the source (`part`), so the stems go to that position, that long.
function H.place_audition(job, status)
  local manifest = core.json_decode(H.read_file(status.manifest or "") or "")
  local part = type(manifest) == "table" and manifest.part
  local rate = type(manifest) == "table" and type(manifest.source) == "table" and tonumber(manifest.source.samplerate)
  if type(part) ~= "table" or type(part.start_frame) ~= "number" or type(part.frames) ~= "number"
    or not rate or rate <= 0 then
    return nil, "sam-bridge's manifest (" .. tostring(status.manifest) .. ") does not say where the audition is."
  end
  job.position = job.position + part.start_frame / rate - (job.request_start or 0)
  job.length = part.frames / rate
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

end
