"""Composition: the resolvers the config tree uses (`src.config.resolvers`, registered on
import), the model/data checks made from the config alone (`checks`), and a resume's config
(`resume`)."""
