"""A TID 1500 report as another vendor's tool writes it, built with highdicom's own API (not our writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom


def write_vendor_sr(ct: pydicom.Dataset, path: Path) -> None:
    """A report as another tool writes it (highdicom's API): a CIRCLE on the image, a 3-D point, vendor codes."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.sr.AlgorithmIdentification(name="OtherVendorCAD", version="2.1")
    circle = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=pydicom.uid.generate_uid(), identifier="nodule 1"),
        referenced_region=hd.sr.ImageRegion(graphic_type="CIRCLE", graphic_data=np.array([[60.0, 50.0], [66.0, 50.0]]),
                                            source_image=hd.sr.SourceImageForRegion.from_source_image(ct)),
        finding_type=codes.SCT.Nodule, algorithm_id=algo,
        measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=6.0, unit=codes.UCUM.Millimeter)])
    point = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=pydicom.uid.generate_uid(), identifier="nodule 2"),
        referenced_region=hd.sr.ImageRegion3D(graphic_type="POINT", graphic_data=np.array([[10.0, -20.5, 30.25]]),
                                              frame_of_reference_uid=ct.FrameOfReferenceUID),
        finding_type=codes.SCT.Nodule, algorithm_id=algo)
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[circle, point])
    sr = hd.sr.Comprehensive3DSR(evidence=[ct], content=report[0], series_instance_uid=pydicom.uid.generate_uid(),
                                 series_number=77, sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
                                 manufacturer="Other Vendor", series_description="Vendor CAD")
    sr.save_as(path, enforce_file_format=True)
