def test_a_drivers_own_option_keeps_its_name_type_and_meaning() -> None:
    import msgspec

    from agent.filters.config import processing_of, with_processing
    from drivers.base import SensorOptions

    class OwnAltitude(SensorOptions, frozen=True, tag="own_altitude"):
        altitude: int = 0  # the driver's: its chip compensates for it

    extended = with_processing(OwnAltitude, "own_altitude")
    options = msgspec.convert({"driver": "own_altitude", "altitude": 120}, extended)
    assert options.altitude == 120 and isinstance(options.altitude, int)  # type: ignore[attr-defined]
    assert processing_of(options).altitude is None  # no sea_level_pressure from it
    assert processing_of(options).derived_names == []
