"""A third-party cellpix plugin: one gut hierarchy."""

from cellpix.plugins import BaseType, CellType, Hierarchy, hookimpl


@hookimpl
def cellpix_hierarchies():
    epithelial = BaseType("Epithelial", "CL:0000066", (CellType("Enterocyte", "CL:0000584"),
                                                       CellType("Goblet", "CL:0000160")))
    return {"fake-gut": Hierarchy("fake-gut", (epithelial, BaseType("Mast", "CL:0000097")))}
