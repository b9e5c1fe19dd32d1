"""The networks of cityclf.gan: a class-conditional generator and a projection discriminator,
trained together as one Keras model.

The recipe is the one known to train stably without tuning: a DCGAN-style generator (upsampling
convolutions) with class-conditional batch norm (each city its own gain and bias, Dumoulin et
al. 2017), and a discriminator with spectral normalisation on its weights (Miyato et al. 2018)
and a projection head for the city (Miyato & Koyama 2018), trained with the hinge loss and Adam
(lr 2e-4, beta 0.5, 0.999; one discriminator step per generator step: setting C of the SN-GAN
paper). Spectral normalisation keeps the discriminator from overpowering the generator without
a gradient penalty's second backward pass (which a 2-core machine cannot afford); the
projection conditions on the city more faithfully than feeding the label in as a channel, and
AC-GAN's auxiliary classifier is known to shrink the diversity within a class.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

Z_DIM = 128


def _city_norm(x, city, n_classes: int, name: str):
    """Batch norm whose gain and bias are the city's own (conditional batch norm)."""
    channels = x.shape[-1]
    x = layers.BatchNormalization(center=False, scale=False, name=f"{name}.bn")(x)
    gain = layers.Embedding(n_classes, channels, embeddings_initializer="ones",
                            name=f"{name}.gain")(city)
    bias = layers.Embedding(n_classes, channels, embeddings_initializer="zeros",
                            name=f"{name}.bias")(city)
    x = layers.Multiply()([x, layers.Reshape((1, 1, channels))(gain)])
    return layers.Add()([x, layers.Reshape((1, 1, channels))(bias)])


def build_generator(n_classes: int, img_size: int, width: int) -> keras.Model:
    """(noise, city index) -> (img_size, img_size, 3) RGB in 0..255, as photos are."""
    noise = keras.Input((Z_DIM,), name="noise")
    city = keras.Input((), dtype="int32", name="city")
    doublings = int(math.log2(img_size // 4))
    channels = [width * 2 ** (doublings - i) for i in range(doublings + 1)]
    x = layers.Reshape((4, 4, channels[0]))(layers.Dense(16 * channels[0], name="project")(noise))
    for i in range(doublings):
        x = layers.ReLU()(_city_norm(x, city, n_classes, f"up{i}"))
        x = layers.UpSampling2D(name=f"up{i}.resize")(x)
        x = layers.Conv2D(channels[i + 1], 3, padding="same", name=f"up{i}.conv")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="out.bn")(x))
    x = layers.Conv2D(3, 3, padding="same", activation="tanh", name="out.conv")(x)
    image = layers.Rescaling(127.5, offset=127.5, name="to_rgb255")(x)
    return keras.Model([noise, city], image, name="generator")


def build_discriminator(n_classes: int, img_size: int, width: int) -> keras.Model:
    """(image 0..255, city index) -> a realness score: strided convolutions, then a linear
    score of the pooled features plus their projection on the city's embedding (all spectrally
    normalised except the city embedding: Keras' wrapper casts an Embedding's output to the
    integer type of its input)."""
    image = keras.Input((img_size, img_size, 3), name="image")
    city = keras.Input((), dtype="int32", name="city")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(image)
    for i in range(int(math.log2(img_size // 4))):
        conv = layers.Conv2D(width * 2 ** (i + 1), 4, strides=2, padding="same", name=f"down{i}")
        x = layers.LeakyReLU(0.1)(layers.SpectralNormalization(conv)(x))
    # Summed over the final 4 × 4, as the projection discriminator has it: averaged, a network
    # of spectral norm 1 hardly reaches the hinge margin, and its loss stayed near chance (2).
    features = layers.Rescaling(16.0)(layers.GlobalAveragePooling2D()(x))
    score = layers.SpectralNormalization(layers.Dense(1, name="score"))(features)
    embedded = layers.Embedding(n_classes, features.shape[-1], name="city_embedding")(city)
    projection = layers.Dot(axes=1)([embedded, features])
    return keras.Model([image, city], layers.Add()([score, projection]), name="discriminator")


class ConditionalGAN(keras.Model):
    """Both networks and their optimisers as one Keras model, so that fit() drives training,
    and BackupAndRestore checkpoints (and restores) all of it: weights and optimiser moments
    (the noise and the order of the images start afresh on resume)."""

    def __init__(self, n_classes: int, img_size: int, width: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.generator = build_generator(n_classes, img_size, width)
        self.discriminator = build_discriminator(n_classes, img_size, width)
        self.noise = keras.random.SeedGenerator(seed)
        self.trackers = [keras.metrics.Mean(name=name)
                         for name in ("d_loss", "g_loss", "d_real", "d_fake")]
        self.built = True  # both parts are built functional models

    def compile(self, lr: float):
        self.d_optimizer = keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.999)
        self.g_optimizer = keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.999)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)
        super().compile(optimizer=self.g_optimizer, jit_compile=False)  # XLA: slower on CPU

    @property
    def metrics(self):
        return self.trackers

    def train_step(self, data):
        import tensorflow as tf
        images, cities = data
        cities = ops.cast(cities, "int32")
        batch = ops.shape(images)[0]
        with tf.GradientTape() as tape:
            fake = self.generator([self._noise(batch), cities], training=True)
            scores = self.discriminator([ops.concatenate([images, fake]),
                                         ops.concatenate([cities, cities])], training=True)
            real_score, fake_score = scores[:batch], scores[batch:]
            d_loss = ops.mean(ops.relu(1 - real_score)) + ops.mean(ops.relu(1 + fake_score))
        variables = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, variables), variables))
        with tf.GradientTape() as tape:
            fake = self.generator([self._noise(batch), cities], training=True)
            g_loss = -ops.mean(self.discriminator([fake, cities], training=True))
        variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, variables), variables))
        for tracker, value in zip(self.trackers, (d_loss, g_loss, ops.mean(real_score),
                                                  ops.mean(fake_score))):
            tracker.update_state(value)
        return {tracker.name: tracker.result() for tracker in self.trackers}

    def _noise(self, batch):
        return keras.random.normal((batch, Z_DIM), seed=self.noise)


def generate(generator: keras.Model, cities: np.ndarray, seed: int) -> np.ndarray:
    """uint8 images of the given city indices; the same seed, the same images (the noise of
    image i does not depend on how many are drawn)."""
    noise = np.random.default_rng(seed).standard_normal((len(cities), Z_DIM)).astype(np.float32)
    out = [np.asarray(generator([noise[i:i + 128], np.asarray(cities[i:i + 128], np.int32)],
                                training=False)) for i in range(0, len(cities), 128)]
    size = generator.output_shape[1]
    return np.clip(np.round(np.concatenate(out)), 0, 255).astype(np.uint8) if out else \
        np.zeros((0, size, size, 3), np.uint8)
